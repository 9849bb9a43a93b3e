"""Load the lidar backbone's weights from a BEVFusion, mmdet3d or bare checkpoint.

Three key prefixes are understood:
    encoders.lidar.backbone.*   mit-han-lab BEVFusion
    pts_middle_encoder.*        mmdet3d 1.x
    (none)                      a bare SparseEncoder state dict
Conv weights may be stored in spconv 1.x layout [k0, k1, k2, C_in, C_out]; they are turned
into spconv 2.x layout [C_out, k0, k1, k2, C_in] with permute(4, 0, 1, 2, 3).
Checkpoints are pickles from the internet: they are read with weights_only=True.
"""
import pickle
from pathlib import Path
from typing import Dict

import torch

from helpers.errors import WorkbookError
from helpers.model import SparseEncoder

PREFIXES = ("encoders.lidar.backbone.", "pts_middle_encoder.", "")


def read_state_dict(path) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped from {'state_dict': ...} or {'model': ...}."""
    path = Path(path)
    if not path.is_file():
        raise WorkbookError(f"{path}: checkpoint file not found; pass an existing .pth file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WorkbookError(f"{path}: not a checkpoint torch can load safely (weights_only=True): {first}")
    for wrapper in ("state_dict", "model"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(wrapper), dict):
            ckpt = ckpt[wrapper]
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise WorkbookError(f"{path}: expected a state dict of tensors, found {type(ckpt).__name__}")
    return ckpt


def backbone_state(state: Dict[str, torch.Tensor], path="checkpoint") -> Dict[str, torch.Tensor]:
    """The backbone's entries with their prefix removed; the first prefix that matches wins."""
    for prefix in PREFIXES:
        found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix + "conv_input.")
                 or k.startswith(prefix + "encoder_layers.") or k.startswith(prefix + "conv_out.")}
        if found:
            return found
    raise WorkbookError(f"{path}: no lidar backbone keys found (looked for 'conv_input.' under the prefixes "
                        f"{[p for p in PREFIXES if p]} and bare); is this a BEVFusion lidar checkpoint?")


def to_model_layout(name: str, value: torch.Tensor, expected: torch.Size, layout: str, path) -> torch.Tensor:
    """Convert a checkpoint conv weight (xyz, spconv 1.x or 2.x layout) to the model's shape."""
    if value.dim() == 5:
        xyz = expected if layout == "xyz" else torch.Size([expected[i] for i in (0, 3, 2, 1, 4)])
        if value.shape != xyz and value.permute(4, 0, 1, 2, 3).shape == xyz:
            value = value.permute(4, 0, 1, 2, 3)  # spconv 1.x [k0, k1, k2, Cin, Cout] -> [Cout, k0, k1, k2, Cin]
        if layout == "zyx" and value.shape == xyz:
            value = value.permute(0, 3, 2, 1, 4)  # kernel axes x, y, z -> z, y, x
    if value.shape != expected:
        raise WorkbookError(f"{path}: {name} has shape {list(value.shape)}, the model expects {list(expected)}; "
                            "was the checkpoint trained with other channels or kernel sizes?")
    return value.contiguous()


def load_checkpoint(model: SparseEncoder, path) -> SparseEncoder:
    """Load backbone weights into `model` (in place); every missing or unexpected key is an error."""
    state = backbone_state(read_state_dict(path), path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise WorkbookError(f"{path}: keys do not match the SCN: missing {missing[:5]} ({len(missing)} in all), "
                            f"unexpected {unexpected[:5]} ({len(unexpected)} in all); check the grid config")
    converted = {k: to_model_layout(k, v, expected[k].shape, model.cfg.layout, path) for k, v in state.items()}
    model.load_state_dict(converted, strict=False)
    return model


def to_spconv1_state(model: SparseEncoder, prefix: str = "encoders.lidar.backbone.") -> Dict[str, torch.Tensor]:
    """The model's weights as an old checkpoint stores them (xyz model only): the reverse of load."""
    if model.cfg.layout != "xyz":
        raise WorkbookError("to_spconv1_state needs an xyz model; checkpoints are stored in xyz order")
    return {prefix + k: (v.permute(1, 2, 3, 4, 0) if v.dim() == 5 else v).clone()
            for k, v in model.state_dict().items()}
