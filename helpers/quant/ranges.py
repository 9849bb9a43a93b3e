"""The calibrated amax values, read out: the int8 dynamic ranges the exporter writes into the graph.

    dynamic_ranges(model)     {module: its *_dynamic_range attributes} for every int8 layer, in one host copy
    amax_table(model)         one row per quantizer, for people
    check_calibrated(model)   raises, naming every layer without a usable amax
"""
from typing import Dict, List

import torch
from pytorch_quantization.nn import TensorQuantizer
from torch import nn

from helpers.errors import WorkbookError
from helpers.quant.modules import named_quantizers, quantizers_of

CALIBRATE_HINT = "run helpers.quant.calibrate.calibrate(model, batches) with at least one scan first"


def amax_problem(quantizer: TensorQuantizer):
    """Why this quantizer's amax cannot be exported ("no amax", "non-finite amax" ...), or None if it can."""
    if quantizer.amax is None:
        return "no amax"
    if not torch.isfinite(quantizer.amax).all():
        return "non-finite amax"
    if (quantizer.amax <= 0).any():
        return "non-positive amax"
    return None


def amax_table(model: nn.Module) -> List[dict]:
    """One row per quantizer: layer path, which quantizer, amax (per tensor) or min/max (per channel)."""
    rows = []
    for path, kind, q in named_quantizers(model):
        amax = q.amax.detach().flatten().float().cpu() if q.amax is not None else torch.empty(0)  # [1] or [C_out]
        rows.append({"layer": path, "quantizer": kind,
                     "amax": float(amax[0]) if amax.numel() == 1 and q.axis is None else None,
                     "amax_min": float(amax.min()) if amax.numel() else None,
                     "amax_max": float(amax.max()) if amax.numel() else None,
                     "channels": amax.numel()})
    return rows


def check_calibrated(model: nn.Module, int8_only: bool = False):
    """Raise a WorkbookError naming every layer whose quantizer has no usable amax.

    int8_only=True looks only at the layers that run in int8 (the ones the graph needs ranges for).
    """
    quantizers = named_quantizers(model)
    if not quantizers:
        raise WorkbookError("the model has no quantizers; run helpers.quant.modules.quantize_scn(model) first")
    if int8_only:
        quantizers = [(path, kind, q) for path, kind, q in quantizers if runs_int8(model.get_submodule(path))]
    bad = [f"{path}.{kind} ({amax_problem(q)})" for path, kind, q in quantizers if amax_problem(q)]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise WorkbookError(f"{len(bad)} of {len(quantizers)} quantizers are not calibrated: "
                            f"{', '.join(bad[:5])}{more}; {CALIBRATE_HINT}")


def runs_int8(layer: nn.Module) -> bool:
    """A layer whose input is int8 quantizes with its ranges (set_precision decides; an fp16 layer's
    quantizers are off and the graph carries no ranges for it)."""
    return layer.precision == "int8"


def dynamic_ranges(model: nn.Module) -> Dict[nn.Module, dict]:
    """The int8 dynamic-range attributes of every layer that runs in int8, keyed by module: the only
    reader of amax for the exporter. fp16 layers have none; an fp16 model gives {} and needs no calibration.

        conv: {"input_dynamic_range": amax, "weight_dynamic_ranges": [amax per output channel]}
        add:  {"input0_dynamic_range": amax, "input1_dynamic_range": amax}  (one quantizer serves both)

    All amax values reach the host in ONE copy: on a GPU each separate .item() would wait for all
    queued work, and a trace would pay that wait about fifty times.
    """
    layers = [(m, kind, q) for m in model.modules() for kind, q in quantizers_of(m) if runs_int8(m)]
    if not layers:
        return {}
    if any(q.amax is None for _, _, q in layers):
        check_calibrated(model, int8_only=True)  # raises, naming the layers
    flat = torch.cat([q.amax.detach().reshape(-1) for _, _, q in layers]).float().cpu()  # every amax
    if not (torch.isfinite(flat).all() and (flat > 0).all()):
        check_calibrated(model, int8_only=True)  # raises, naming the layers
    ranges, start = {}, 0
    for module, kind, q in layers:
        values = flat[start:start + q.amax.numel()].tolist()
        start += len(values)
        if kind == "input":
            ranges.setdefault(module, {})["input_dynamic_range"] = values[0]
        elif kind == "weight":  # one per output channel; a single per-tensor value stands for all of them
            if len(values) not in (1, module.out_channels):
                raise WorkbookError(f"{module.layer_name or 'a quantized conv'} has {len(values)} weight amax values "
                                    f"for {module.out_channels} output channels; {CALIBRATE_HINT}")
            ranges.setdefault(module, {})["weight_dynamic_ranges"] = values * (module.out_channels // len(values))
        else:
            ranges[module] = {"input0_dynamic_range": values[0], "input1_dynamic_range": values[0]}
    return ranges
