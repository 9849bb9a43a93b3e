"""Load the lidar backbone's weights from a BEVFusion, mmdet3d or bare checkpoint.

Five key prefixes are understood:
    encoders.lidar.backbone.*   mit-han-lab BEVFusion
    pts_middle_encoder.*        mmdet3d 1.x
    backbone.*                  CenterPoint (det3d)
    backbone_3d.*               OpenPCDet ({'model_state': ...})
    (none)                      a bare state dict of the network
The backbone's keys are those under the model's own top-level modules (conv_input, encoder_layers,
conv_out for BEVFusion; conv_input, conv1 .. conv4, extra_conv for CenterPoint).
Conv weights may be stored in spconv 1.x layout [k0, k1, k2, C_in, C_out]; they are turned
into spconv 2.x layout [C_out, k0, k1, k2, C_in] with permute(4, 0, 1, 2, 3). The kernel axes are
stored in the checkpoint's own order (cfg.checkpoint_layout: xyz for BEVFusion, zyx for CenterPoint)
and reversed when the model runs in the other one.
Checkpoints are pickles from the internet: they are read with weights_only=True. A checkpoint that
pickles a whole model (NVIDIA's bevfusion_ptq.pth) is read by helpers.whole_model instead, which runs
none of its code; the calibrated `_amax` buffers of its quantizers (`<conv>.input_quantizer._amax`,
`<conv>.weight_quantizer._amax`, `<add>.quantizer._amax`) are kept on the model as `checkpoint_amax`,
and prepare_scn uses them as they are instead of calibrating.
"""
from pathlib import Path
from typing import Dict, Optional

import torch
from spconv.pytorch.conv import SparseConvolution
from torch import nn

from helpers.errors import WorkbookError
from helpers.files import check_zip_inflation
from helpers.model import ResidualAdd
from helpers.whole_model import read_whole_model

PREFIXES = ("encoders.lidar.backbone.", "pts_middle_encoder.", "backbone.", "backbone_3d.", "")


def read_state_dict(path) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped from {'state_dict': ...} or {'model': ...}."""
    path = Path(path)
    if not path.is_file():
        raise WorkbookError(f"{path}: checkpoint file not found; pass an existing .pth file")
    check_zip_inflation(path, "--checkpoint")  # a small zip that inflates to gigabytes: refused before reading
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise WorkbookError(f"{path}: cannot be read ({err.strerror}); expected a readable .pth file") from None
    except Exception:  # truncated zip, a pickled whole model, ...: never executed
        try:
            return read_whole_model(path)  # a pickled model: read its tensors without running it
        except WorkbookError as err:
            reason = str(err).removeprefix(f"{path}: ")
            raise WorkbookError(f"{path}: not a checkpoint: neither a state dict torch loads safely (weights_only="
                                f"True) nor a pickled model readable without running it ({reason})") from None
    for wrapper in ("state_dict", "model", "model_state"):  # mmdet3d / det3d, ..., OpenPCDet
        if isinstance(ckpt, dict) and isinstance(ckpt.get(wrapper), dict):
            ckpt = ckpt[wrapper]
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise WorkbookError(f"{path}: expected a state dict of tensors, found {type(ckpt).__name__}")
    not_names = [k for k in ckpt if not isinstance(k, str)]
    if not_names:
        first = not_names[0]
        raise WorkbookError(f"{path}: {len(not_names)} keys are not parameter names (e.g. {type(first).__name__} "
                            f"{first!r}); expected a state dict keyed by name; save model.state_dict()")
    return ckpt


def check_weights(state: Dict[str, torch.Tensor], source="the model"):
    """Every tensor dense, real (not meta), floating where the model is, and finite; else name the first bad one."""
    for name, value in state.items():
        problem = None
        if value.layout != torch.strided:
            problem = f"is a {value.layout} tensor; expected a dense one; save it with .to_dense()"
        elif value.is_meta:
            problem = "is a meta tensor (a shape without values); save real weights"
        elif name.endswith("num_batches_tracked"):
            continue  # an integer counter
        elif not value.is_floating_point():
            problem = f"has dtype {value.dtype}; expected floating-point weights"
        elif not bool(torch.isfinite(value).all()):
            problem = (f"holds {int((~torch.isfinite(value)).sum())} NaN or Inf values; expected finite weights; "
                       "is the checkpoint from a diverged training run?")
        if problem:
            raise WorkbookError(f"{source}: {name} {problem}")


def backbone_state(state: Dict[str, torch.Tensor], path="checkpoint",
                   modules=("conv_input", "encoder_layers", "conv_out")) -> Dict[str, torch.Tensor]:
    """The entries under the top-level `modules`, prefix removed; the first prefix that matches wins."""
    for prefix in PREFIXES:
        found = {k[len(prefix):]: v for k, v in state.items()
                 if any(k.startswith(f"{prefix}{m}.") for m in modules)}
        if found:
            return found
    raise WorkbookError(f"{path}: no lidar backbone keys found (looked for {modules[0]!r}... under the prefixes "
                        f"{[p for p in PREFIXES if p]} and bare); is this a checkpoint of the chosen network?")


def to_model_layout(name: str, value: torch.Tensor, expected: torch.Size, layout: str, path,
                    stored: str = "xyz") -> torch.Tensor:
    """Convert a checkpoint conv weight (kernel axes in `stored` order, spconv 1.x or 2.x) to the model's shape."""
    if value.dim() == 5:
        same = expected if layout == stored else torch.Size([expected[i] for i in (0, 3, 2, 1, 4)])
        if value.shape != same and value.permute(4, 0, 1, 2, 3).shape == same:
            value = value.permute(4, 0, 1, 2, 3)  # spconv 1.x [k0, k1, k2, Cin, Cout] -> [Cout, k0, k1, k2, Cin]
        if layout != stored and value.shape == same:
            value = value.permute(0, 3, 2, 1, 4)  # kernel axes reversed: x, y, z <-> z, y, x
    if value.shape != expected:
        raise WorkbookError(f"{path}: {name} has shape {list(value.shape)}, the model expects {list(expected)}; "
                            "was the checkpoint trained with other channels or kernel sizes?")
    return value.contiguous()


AMAX = "._amax"  # the key ending of a pytorch-quantization quantizer's calibrated range


def load_checkpoint(model: nn.Module, path) -> nn.Module:
    """Load backbone weights into `model` (in place); every missing or unexpected key is an error.

    Calibrated `_amax` values in the checkpoint go to `model.checkpoint_amax` ({quantizer path: tensor}),
    for prepare_scn to use instead of calibrating."""
    state = backbone_state(read_state_dict(path), path, [name for name, _ in model.named_children()])
    amax = {k[:-len(AMAX)]: state.pop(k) for k in [k for k in state if k.endswith(AMAX)]}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise WorkbookError(f"{path}: keys do not match the SCN: missing {missing[:5]} ({len(missing)} in all), "
                            f"unexpected {unexpected[:5]} ({len(unexpected)} in all); check the grid config")
    check_weights(state, path)  # before anything is copied into the model
    converted = {k: to_model_layout(k, v, expected[k].shape, model.cfg.layout, path, model.cfg.checkpoint_layout)
                 for k, v in state.items()}
    model.load_state_dict(converted, strict=False)
    if amax:
        check_weights(amax, path)
        check_amax_names(model, amax, path)
        model.checkpoint_amax = amax
    return model


def quantizer_paths(model: nn.Module) -> list:
    """The quantizers quantize_scn will give the float `model`: every sparse conv's input and weight, every add's."""
    paths = []
    for path, m in model.named_modules():
        if isinstance(m, SparseConvolution):
            paths += [f"{path}.input_quantizer", f"{path}.weight_quantizer"]
        elif isinstance(m, ResidualAdd):
            paths.append(f"{path}.quantizer")
    return paths


def check_amax_names(model: nn.Module, amax: Dict[str, torch.Tensor], path):
    """Every calibrated range belongs to one of the model's quantizers, and each quantizer has one."""
    wanted = quantizer_paths(model)
    unknown = [k for k in amax if k not in wanted]
    missing = [k for k in wanted if k not in amax]
    if unknown or missing:
        raise WorkbookError(f"{path}: its calibrated _amax ranges do not match the SCN's quantizers: missing "
                            f"{missing[:3]} ({len(missing)} in all), unknown {unknown[:3]} ({len(unknown)} in all); "
                            "expected <conv>.input_quantizer, <conv>.weight_quantizer and <add>.quantizer")


def to_spconv1_state(model: nn.Module, prefix: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The model's weights as an old checkpoint stores them: the reverse of load.

    Needs a model in its checkpoints' layout (xyz for BEVFusion, zyx for CenterPoint); the prefix
    defaults to the network's own (encoders.lidar.backbone. / backbone.).
    """
    stored = model.cfg.checkpoint_layout
    if model.cfg.layout != stored:
        raise WorkbookError(f"to_spconv1_state needs a {stored} model; these checkpoints are stored in {stored} order")
    prefix = model.cfg.checkpoint_prefix if prefix is None else prefix
    return {prefix + k: (v.permute(1, 2, 3, 4, 0) if v.dim() == 5 else v).clone()
            for k, v in model.state_dict().items()}
