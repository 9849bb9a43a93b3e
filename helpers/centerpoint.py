"""CenterPoint's lidar backbone (det3d's SpMiddleResNetFHD) rebuilt with spconv 2.x.

    voxels [N, 5] + coords [N, 4] (b, z, y, x) -> conv_input -> conv1 .. conv4 -> extra_conv
    -> dense [1, 128, 2, 180, 180] -> view -> BEV map [1, 256, 180, 180]

CenterPoint works in zyx: its sparse shape is the voxel grid reversed, [41, 1440, 1440] for
nuScenes at 0.075 m (grid [1440, 1440, 40], one more z plane, as BEVFusion), and dense() already
gives [N, C, Z, Y, X], so the BEV map is a plain view: no permute (one node fewer than BEVFusion).

The config is helpers.config.CenterPointConfig; build it with helpers.model.build_scn(cfg).
Module names follow CenterPoint's checkpoints (`conv_input.0`, `conv1.0.conv1`, `conv2.0`,
`conv2.3.bn2`, `extra_conv.0`, ...), so its `backbone.*` weights load by name (helpers.checkpoint).
Differences from BEVFusion's SparseEncoder, all of them the checkpoint's:
- the convs inside a basic block carry a bias (BatchNorm follows them all the same);
- conv_input is a 3x3x3 SubM with padding 0 (a submanifold conv ignores padding) sharing the
  rulebook `res0` with the first stage; stages 2-4 start with the stride-2 conv;
- extra_conv squeezes z 5 -> 2 with a (3, 1, 1) kernel (z, y, x), stride (2, 1, 1).
The ReLUs get one module per use (CenterPoint reuses one `relu` per block): fusion needs to know
which ReLU follows a conv and which follows the residual add. ReLUs hold no weights, so the
state dict is unchanged.
"""
import spconv.pytorch as spconv
import torch
from torch import nn

from helpers.config import CenterPointConfig
from helpers.model import SparseBasicBlock, conv_bn_relu


class BiasedSubMConv3d(spconv.SubMConv3d):
    """A SubM conv with a bias, added after the conv: spconv 2.x fuses a bias only on a GPU."""

    def __init__(self, channels: int, indice_key: str):
        super().__init__(channels, channels, 3, padding=1, bias=True, indice_key=indice_key)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        out = self._conv_forward(self.training, x, self.weight, None)  # [N, C]
        return out.replace_feature(out.features + self.bias)


class SpMiddleResNetFHD(nn.Module):
    """The SCN: voxel features [N, 5] and zyx coords [N, 4] -> BEV map [1, 256, Y / 8, X / 8]."""

    def __init__(self, cfg: CenterPointConfig):
        super().__init__()
        self.cfg = cfg
        self.sparse_shape = cfg.sparse_shape  # [41, 1440, 1440]
        c = cfg.stage_channels  # (16, 32, 64, 128)
        self.conv_input = conv_bn_relu(cfg.in_channels, c[0], cfg, 3, padding=0, subm=True, key="res0")
        for i, channels in enumerate(c):
            layers = [] if i == 0 else list(conv_bn_relu(c[i - 1], channels, cfg, 3, stride=2,
                                                         padding=cfg.down_paddings[i - 1], key=f"spconv{i + 1}"))
            layers += [SparseBasicBlock(channels, f"res{i}", cfg, conv=BiasedSubMConv3d)
                       for _ in range(cfg.blocks_per_stage)]  # det3d's basic block: biased convs
            self.add_module(f"conv{i + 1}", spconv.SparseSequential(*layers))
        self.extra_conv = conv_bn_relu(c[-1], cfg.output_channels, cfg, cfg.extra_kernel, stride=cfg.extra_stride,
                                       key="spconv_extra")

    def forward(self, voxel_features: torch.Tensor, coors: torch.Tensor, batch_size: int = 1) -> torch.Tensor:
        x = spconv.SparseConvTensor(voxel_features, coors, self.sparse_shape, batch_size)  # [N, 5], [N, 4]
        x = self.conv_input(x)  # [N, 16] on [41, 1440, 1440]
        x = self.conv4(self.conv3(self.conv2(self.conv1(x))))  # [M, 128] on [5, 180, 180]
        out = self.extra_conv(x)  # [K, 128] on [2, 180, 180]
        dense = out.dense()  # [1, 128, 2, 180, 180]: N, C, Z, Y, X
        n, c, d, h, w = dense.shape
        return dense.view(n, c * d, h, w)  # [1, 256, 180, 180]

