"""BEVFusion's lidar backbone (mmdet3d's SparseEncoder) rebuilt with spconv 2.x.

    voxels [N, 5] + coords [N, 4] -> conv_input -> 4 encoder stages -> conv_out
    -> dense [1, 128, 180, 180, 2] -> permute -> reshape -> BEV map [1, 256, 180, 180]

Module names follow the checkpoints (`conv_input.0`, `encoder_layers.encoder_layer1.0.conv1`,
`conv_out.0`, ...), so a BEVFusion state dict loads by name (see helpers.checkpoint).
The same code runs on CPU and CUDA, in fp32 or fp16 (spconv 2.3.8's Native algorithm does fp16 on the CPU).
"""
from typing import Callable, Sequence

import spconv.pytorch as spconv
import torch
from spconv.core import ConvAlgo
from torch import nn

from helpers.config import SCNConfig
from helpers.errors import WorkbookError
from helpers.layout import network_layout


def per_axis(value, layout: str):
    """Expand an int to 3 axes ([k, k, k]) and give them in the layout's axis order."""
    axes = [value] * 3 if isinstance(value, int) else list(value)
    return axes if layout == "xyz" else axes[::-1]


class ResidualAdd(nn.Module):
    """`branch + identity` as a module, so quantization and tracing can find every residual add."""

    def forward(self, branch: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        return branch + identity  # [N, C] + [N, C]


def subm_conv(channels: int, indice_key: str) -> spconv.SubMConv3d:
    """The 3x3x3 submanifold conv of a BEVFusion basic block: bias-free, a BatchNorm follows it."""
    return spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)


class SparseBasicBlock(spconv.SparseModule):
    """ResNet basic block on sparse tensors: two 3x3x3 submanifold convs and a residual add.

    x -> conv1 -> bn1 -> relu1 -> conv2 -> bn2 -> add(., x) -> relu
    Submanifold convs keep the active sites, so all of them share one rulebook (indice_key).
    `conv(channels, indice_key)` makes the two convs: BEVFusion's are bias-free (subm_conv), CenterPoint's
    carry a bias (helpers.centerpoint.BiasedSubMConv3d).
    """

    def __init__(self, channels: int, indice_key: str, cfg, conv: Callable = subm_conv):
        super().__init__()
        bn = dict(eps=cfg.bn_eps, momentum=cfg.bn_momentum)
        self.conv1 = conv(channels, indice_key)
        self.bn1 = nn.BatchNorm1d(channels, **bn)
        self.relu1 = nn.ReLU()  # fused into conv1 before export (activation="ReLU")
        self.conv2 = conv(channels, indice_key)
        self.bn2 = nn.BatchNorm1d(channels, **bn)
        self.add = ResidualAdd()
        self.relu = nn.ReLU()  # stays a Relu node: it follows the add

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        identity = x.features  # [N, C]
        out = self.conv1(x)
        out = out.replace_feature(self.relu1(self.bn1(out.features)))
        out = self.conv2(out)
        out = out.replace_feature(self.bn2(out.features))
        out = out.replace_feature(self.add(out.features, identity))
        return out.replace_feature(self.relu(out.features))


def conv_bn_relu(cin: int, cout: int, cfg, kernel, stride=1, padding=0, subm=False, key=""):
    """A conv + BatchNorm1d + ReLU stage, named 0, 1, 2 as in BEVFusion's and CenterPoint's checkpoints."""
    conv_type = spconv.SubMConv3d if subm else spconv.SparseConv3d
    conv = conv_type(cin, cout, per_axis(kernel, cfg.layout), stride=per_axis(stride, cfg.layout),
                     padding=per_axis(padding, cfg.layout), bias=False, indice_key=key)
    return spconv.SparseSequential(conv, nn.BatchNorm1d(cout, eps=cfg.bn_eps, momentum=cfg.bn_momentum), nn.ReLU())


class SparseEncoder(nn.Module):
    """The SCN: voxel features [N, C_in] and coords [N, 4] -> BEV map [1, C_out * 2, X / 8, Y / 8]."""

    def __init__(self, cfg: SCNConfig):
        super().__init__()
        self.cfg = cfg
        self.sparse_shape = cfg.sparse_shape  # [1440, 1440, 41] for xyz, reversed for zyx
        self.conv_input = conv_bn_relu(cfg.in_channels, cfg.base_channels, cfg, 3, padding=1, subm=True, key="subm1")
        self.encoder_layers = spconv.SparseSequential()
        cin = cfg.base_channels
        last = len(cfg.encoder_channels) - 1
        for i, (channels, paddings) in enumerate(zip(cfg.encoder_channels, cfg.encoder_paddings)):
            blocks = []
            for j, (cout, padding) in enumerate(zip(channels, paddings)):
                if j == len(channels) - 1 and i != last:  # stage ends with a stride-2 down-sampling conv
                    blocks.append(conv_bn_relu(cin, cout, cfg, 3, stride=2, padding=padding, key=f"spconv{i + 1}"))
                else:
                    blocks.append(SparseBasicBlock(cout, f"subm{i + 1}", cfg))
                cin = cout
            self.encoder_layers.add_module(f"encoder_layer{i + 1}", spconv.SparseSequential(*blocks))
        self.conv_out = conv_bn_relu(cin, cfg.output_channels, cfg, (1, 1, 3), stride=(1, 1, 2), key="spconv_down2")
        # dense() gives [N, C, X, Y, Z] (xyz) or [N, C, Z, Y, X] (zyx); both become [N, C, Z, X, Y]
        self.bev_permute = (0, 1, 4, 2, 3) if cfg.layout == "xyz" else (0, 1, 2, 4, 3)

    def forward(self, voxel_features: torch.Tensor, coors: torch.Tensor, batch_size: int = 1) -> torch.Tensor:
        x = spconv.SparseConvTensor(voxel_features, coors, self.sparse_shape, batch_size)  # [N, 5], [N, 4]
        x = self.conv_input(x)  # [N, 16] on the full grid
        x = self.encoder_layers(x)  # [M, 128] on the 1/8 grid
        out = self.conv_out(x)  # [K, 128], z 5 -> 2
        dense = out.dense()  # [1, 128, 180, 180, 2] for xyz
        dense = dense.permute(*self.bev_permute).contiguous()  # [1, 128, 2, 180, 180]
        n, c, d, h, w = dense.shape
        return dense.view(n, c * d, h, w)  # [1, 256, 180, 180]


def layout_of(model: nn.Module) -> str:
    """'xyz' or 'zyx', the order of the voxel coordinates, as the network itself says (helpers.layout)."""
    return network_layout(model)


def network_class(cfg) -> type:
    """The network a config describes: cfg.network is 'bevfusion', 'centerpoint', 'voxelbackbone8x' or
    'voxelresbackbone8x'."""
    if cfg.network == "centerpoint":
        from helpers.centerpoint import SpMiddleResNetFHD  # imported here: it builds on this module's blocks
        return SpMiddleResNetFHD
    if cfg.network in ("voxelbackbone8x", "voxelresbackbone8x"):
        from helpers.openpcdet import VoxelBackBone8x, VoxelResBackBone8x
        return VoxelBackBone8x if cfg.network == "voxelbackbone8x" else VoxelResBackBone8x
    return SparseEncoder


def build_scn(cfg) -> nn.Module:
    """A randomly initialised SCN of the config's network (BEVFusion's SparseEncoder or CenterPoint's
    SpMiddleResNetFHD) in eval mode; load real weights with helpers.checkpoint."""
    torch.manual_seed(0)  # the same config always gives the same weights
    model = network_class(cfg)(cfg).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding them is a real test
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.8, 1.2)
            m.bias.data.uniform_(-0.1, 0.1)
    return model


def pick_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' without a GPU is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise WorkbookError(f"device={device!r} is not supported; expected 'auto', 'cpu' or 'cuda'")
    if device == "cuda" and not torch.cuda.is_available():
        raise WorkbookError("device='cuda' was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(device)


def place(model: nn.Module, device: torch.device, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Move the model and pick spconv's algorithm: the CPU runs only the Native one (in fp32 or fp16)."""
    device = torch.device(device)
    algo = ConvAlgo.Native if device.type == "cpu" else ConvAlgo.MaskImplicitGemm
    for m in model.modules():
        if isinstance(m, (spconv.conv.SparseConvolution, spconv.pool.SparseMaxPool)):  # pools: for the report
            m.algo = algo
    return model.to(device=device, dtype=dtype)


def spatial_shapes(cfg: SCNConfig) -> Sequence[Sequence[int]]:
    """Hand-computed spatial shapes after conv_input, each down-sampling conv and conv_out (xyz)."""
    def down(n, k, s, p):
        return (n + 2 * p - k) // s + 1
    shapes = [cfg.grid_xyz]
    for paddings in [(1, 1, 1), (1, 1, 1), (1, 1, 0)]:
        shapes.append([down(n, 3, 2, p) for n, p in zip(shapes[-1], paddings)])
    shapes.append([down(n, k, s, 0) for n, k, s in zip(shapes[-1], (1, 1, 3), (1, 1, 2))])
    return shapes
