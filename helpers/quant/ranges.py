"""The calibrated amax values, read out: the int8 dynamic ranges the exporter writes into the graph.

    dynamic_ranges(model)     {module: its *_dynamic_range attributes}, every amax read in one host copy
    amax_table(model)         one row per quantizer, for people
    check_calibrated(model)   raises, naming every layer without a usable amax
"""
from typing import Dict, List

import torch
from pytorch_quantization.nn import TensorQuantizer
from torch import nn

from helpers.errors import WorkbookError
from helpers.quant.modules import QuantAdd, QuantSparseConv, named_quantizers, quantizers_of

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


def check_calibrated(model: nn.Module):
    """Raise a WorkbookError naming every layer whose quantizer has no usable amax."""
    quantizers = named_quantizers(model)
    if not quantizers:
        raise WorkbookError("the model has no quantizers; run helpers.quant.modules.quantize_scn(model) first")
    bad = [f"{path}.{kind} ({amax_problem(q)})" for path, kind, q in quantizers if amax_problem(q)]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise WorkbookError(f"{len(bad)} of {len(quantizers)} quantizers are not calibrated: "
                            f"{', '.join(bad[:5])}{more}; {CALIBRATE_HINT}")


def checked_amax(quantizer: TensorQuantizer, layer: str, kind: str) -> torch.Tensor:
    """The quantizer's amax as a flat fp32 CPU tensor, or a WorkbookError naming the layer."""
    problem = amax_problem(quantizer)
    if problem:
        raise WorkbookError(f"{layer or 'a quantized layer'} has {problem} in its {kind} quantizer; {CALIBRATE_HINT}")
    return quantizer.amax.detach().flatten().float().cpu()


def input_dynamic_range(conv: QuantSparseConv) -> float:
    """The conv's input amax: int8 values -127..127 stand for -amax..amax."""
    return float(checked_amax(conv.input_quantizer, conv.layer_name, "input")[0])


def weight_dynamic_ranges(conv: QuantSparseConv) -> List[float]:
    """The conv's weight amax per output channel (length C_out)."""
    amax = checked_amax(conv.weight_quantizer, conv.layer_name, "weight")  # [C_out] (or [1])
    if amax.numel() == 1:
        amax = amax.expand(conv.out_channels)
    if amax.numel() != conv.out_channels:
        raise WorkbookError(f"{conv.layer_name} has {amax.numel()} weight amax values for {conv.out_channels} "
                            f"output channels; {CALIBRATE_HINT}")
    return amax.tolist()


def add_dynamic_range(add: QuantAdd) -> float:
    """The amax shared by both inputs of a residual add."""
    return float(checked_amax(add.quantizer, add.layer_name, "add")[0])


def dynamic_ranges(model: nn.Module) -> Dict[nn.Module, dict]:
    """The int8 dynamic-range attributes of every int8 layer, keyed by module (fp16 layers have none).

    All amax values reach the host in ONE copy: on a GPU each separate .item() would wait for all
    queued work, and a trace would pay that wait about fifty times.
    """
    if not named_quantizers(model):
        check_calibrated(model)  # raises: not quantized at all
    layers = [(m, kind, q) for m in model.modules() for kind, q in quantizers_of(m) if m.precision == "int8"]
    if not layers:
        return {}  # an all-fp16 network
    if any(q.amax is None for _, _, q in layers):
        check_calibrated(model)  # raises, naming the layers
    flat = torch.cat([q.amax.detach().reshape(-1) for _, _, q in layers]).float().cpu()  # every amax
    if not (torch.isfinite(flat).all() and (flat > 0).all()):
        check_calibrated(model)  # raises, naming the layers
    ranges, start = {}, 0
    for module, kind, q in layers:
        values = flat[start:start + q.amax.numel()].tolist()
        start += len(values)
        if kind == "input":
            ranges.setdefault(module, {})["input_dynamic_range"] = values[0]
        elif kind == "weight":  # one per output channel
            ranges.setdefault(module, {})["weight_dynamic_ranges"] = values * (module.out_channels // len(values))
        else:  # one quantizer serves both inputs of the add
            ranges[module] = {"input0_dynamic_range": values[0], "input1_dynamic_range": values[0]}
    return ranges
