"""OpenPCDet's 3D backbones VoxelBackBone8x and VoxelResBackBone8x rebuilt with spconv 2.x, for KITTI.

    voxels [N, 4] + coords [N, 4] (b, z, y, x) -> conv_input -> conv1 .. conv4 -> conv_out
    -> dense [1, 128, 2, 200, 176] -> view (OpenPCDet's HeightCompression) -> BEV map [1, 256, 200, 176]

The 3D backbones of SECOND, PV-RCNN and Voxel R-CNN (VoxelBackBone8x: plain conv + BN + ReLU blocks)
and of the residual variants (VoxelResBackBone8x: basic blocks with biased convs and a residual add).
KITTI grid: voxel 0.05 x 0.05 x 0.1 m over [0, -40, -3, 70.4, 40, 1] m -> [1408, 1600, 40] (x, y, z), and
in zyx the sparse shape [41, 1600, 1408] (one more z plane, as OpenPCDet's grid_size[::-1] + [1, 0, 0]).

Module names follow OpenPCDet's checkpoints, so their `backbone_3d.*` weights load by name
(helpers.checkpoint): `conv_input.0`, `conv1.0.0` (a block is conv 0, BN 1, ReLU 2), `conv2.0.0` the
stride-2 conv of stage 2, `conv2.1.0`, ...; in the residual network `conv1.0.conv1`, `conv2.1.bn2`, ...;
and `conv_out.0`. Rulebooks: `subm1` .. `subm4` (res1 .. res4 in the residual one), `spconv2` .. `spconv4`,
`spconv_down2`. The config is helpers.config.VoxelBackBone8xConfig / VoxelResBackBone8xConfig; build
it with helpers.model.build_scn(cfg).

Differences from OpenPCDet's code, none of them in the state dict:
- a basic block has one ReLU module per use (`relu1` after conv1, `relu` after the add), where OpenPCDet
  calls one `relu` twice: fusion must know which ReLU follows a conv;
- the residual add is a ResidualAdd module (OpenPCDet adds the features inline), so it is traced;
- the biased block convs add their bias after the conv (helpers.centerpoint.BiasedSubMConv3d).
"""
import spconv.pytorch as spconv
import torch
from torch import nn

from helpers.centerpoint import BiasedSubMConv3d
from helpers.config import VoxelBackBone8xConfig
from helpers.model import SparseBasicBlock, conv_bn_relu

DOWN_PADDINGS = (1, 1, (1, 1, 0))  # stride-2 convs opening conv2 .. conv4, (x, y, z): conv4 pads z by 0


class VoxelBackBone8x(nn.Module):
    """SECOND's backbone: voxel features [N, 4] and zyx coords [N, 4] -> BEV map [1, 256, Y / 8, X / 8]."""

    def __init__(self, cfg: VoxelBackBone8xConfig):
        super().__init__()
        self.cfg = cfg
        self.sparse_shape = cfg.sparse_shape  # [41, 1600, 1408]
        c = cfg.stage_channels  # (16, 32, 64, 64)
        self.conv_input = conv_bn_relu(cfg.in_channels, c[0], cfg, 3, padding=1, subm=True, key="subm1")
        for i, channels in enumerate(c):
            layers = [] if i == 0 else [conv_bn_relu(c[i - 1], channels, cfg, 3, stride=2,
                                                     padding=DOWN_PADDINGS[i - 1], key=f"spconv{i + 1}")]
            layers += [conv_bn_relu(channels, channels, cfg, 3, subm=True, key=f"subm{i + 1}")  # padding 0, as
                       for _ in range(self.subm_blocks(i))]  # OpenPCDet's post_act_block (a SubM ignores it)
            self.add_module(f"conv{i + 1}", spconv.SparseSequential(*layers))
        self.conv_out = conv_bn_relu(c[-1], cfg.output_channels, cfg, (1, 1, 3), stride=(1, 1, 2), key="spconv_down2")

    @staticmethod
    def subm_blocks(stage: int) -> int:
        return 1 if stage == 0 else 2  # conv1 has one SubM block, conv2 .. conv4 two after their stride-2 conv

    def forward(self, voxel_features: torch.Tensor, coors: torch.Tensor, batch_size: int = 1) -> torch.Tensor:
        x = spconv.SparseConvTensor(voxel_features, coors, self.sparse_shape, batch_size)  # [N, 4], [N, 4]
        x = self.conv_input(x)  # [N, 16] on [41, 1600, 1408]
        x = self.conv4(self.conv3(self.conv2(self.conv1(x))))  # [M, 64 or 128] on [5, 200, 176]
        out = self.conv_out(x)  # [K, 128] on [2, 200, 176]
        dense = out.dense()  # [1, 128, 2, 200, 176]: N, C, Z, Y, X
        n, c, d, h, w = dense.shape
        return dense.view(n, c * d, h, w)  # [1, 256, 200, 176]: HeightCompression


class VoxelResBackBone8x(VoxelBackBone8x):
    """The residual variant: each stage's SubM blocks are two basic blocks with biased convs (res1 .. res4)."""

    def __init__(self, cfg: VoxelBackBone8xConfig):
        nn.Module.__init__(self)
        self.cfg = cfg
        self.sparse_shape = cfg.sparse_shape  # [41, 1600, 1408]
        c = cfg.stage_channels  # (16, 32, 64, 128)
        self.conv_input = conv_bn_relu(cfg.in_channels, c[0], cfg, 3, padding=1, subm=True, key="subm1")
        for i, channels in enumerate(c):
            layers = [] if i == 0 else [conv_bn_relu(c[i - 1], channels, cfg, 3, stride=2,
                                                     padding=DOWN_PADDINGS[i - 1], key=f"spconv{i + 1}")]
            layers += [SparseBasicBlock(channels, f"res{i + 1}", cfg, conv=BiasedSubMConv3d) for _ in range(2)]
            self.add_module(f"conv{i + 1}", spconv.SparseSequential(*layers))
        self.conv_out = conv_bn_relu(c[-1], cfg.output_channels, cfg, (1, 1, 3), stride=(1, 1, 2), key="spconv_down2")
