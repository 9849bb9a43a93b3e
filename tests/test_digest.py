"""The exported bytes do not drift: a fixed model with fixed amax values always gives the same file.

The model is build_scn (seeded weights), quantized, BN-folded, ReLU-fused and set to int8; every
quantizer's amax is SET here (no calibration, so no statistics can move it); the input is a fixed
small set of voxels; everything runs on the CPU in fp32. A refactoring must leave DIGEST as it is.
A change that alters the graph on purpose updates DIGEST in the same commit and says why.
"""
import hashlib

import torch

from helpers.config import get_config
from helpers.model import build_scn, place
from helpers.pipeline import export_scn
from helpers.quant.fuse import fuse
from helpers.quant.modules import named_quantizers, quantize_scn
from helpers.quant.precision import set_precision

DIGEST = "b27b624cfa9ba686ea57a862900e016d40f269a4b2c16f3f94fe0baf1ee6d5aa"


def fixed_amax(model):
    """Input / add amax 0.5, 0.55, 0.6, ... in module order; weight amax 0.05 .. 0.2 across the channels."""
    for i, (_, kind, q) in enumerate(named_quantizers(model)):
        if kind == "weight":
            conv = next(m for m in model.modules() if getattr(m, "weight_quantizer", None) is q)
            q.amax = torch.linspace(0.05, 0.2, conv.out_channels).view(-1, 1, 1, 1, 1)  # [C_out, 1, 1, 1, 1]
        else:
            q.amax = torch.tensor(0.5 + 0.05 * i)


def fixed_input(cfg, n=800):
    """`n` distinct voxels in a 48 x 48 x 16 patch at the grid centre, features from a seeded generator."""
    g = torch.Generator().manual_seed(7)
    centre = torch.tensor(cfg.grid_xyz) // 2  # [3]
    flat = torch.randperm(48 * 48 * 16, generator=g)[:n]  # [n] distinct cells of the patch
    xyz = torch.stack([flat // (48 * 16), flat // 16 % 48, flat % 16], 1) + centre - torch.tensor([24, 24, 8])
    coords = torch.cat([torch.zeros(n, 1, dtype=torch.long), xyz], 1).int()  # [n, 4] = (0, x, y, z)
    voxels = torch.randn(n, cfg.in_channels, generator=g)  # [n, 5]
    return voxels, coords


def exported_bytes(tmp_path) -> bytes:
    cfg = get_config()
    voxels, coords = fixed_input(cfg)
    model = place(build_scn(cfg), "cpu")  # torch.manual_seed(0) inside: fixed weights
    quantize_scn(model)
    fuse(model, voxels, coords)
    set_precision(model, int8=True)
    fixed_amax(model)
    path = tmp_path / "scn.onnx"
    export_scn(model, voxels, coords, path)
    return path.read_bytes()


def test_export_digest_is_unchanged(tmp_path):
    digest = hashlib.sha256(exported_bytes(tmp_path)).hexdigest()
    assert digest == DIGEST, f"the exported file changed: sha256 {digest}"
