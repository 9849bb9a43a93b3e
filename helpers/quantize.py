"""Int8 quantization of the SCN with pytorch-quantization, as NVIDIA's reference does it.

    quantize_scn(model)                  SubMConv3d / SparseConv3d -> QuantSparseConv, ResidualAdd -> QuantAdd
    fold_bn, fuse_relu(model, v, c)      conv -> BN -> ReLU becomes one conv with a bias and activation="ReLU"
    set_precision(model)                 int8 everywhere, fp16 for the first input and the last output
    calibrate(model, batches)            amax of every quantizer from a few scans
    input_dynamic_range(conv) ...        the numbers the exporter writes into the ONNX attributes

Everything runs in fp32 on CPU or CUDA; quantization is "fake" (quantize, then de-quantize).
"""
from collections import Counter
from contextlib import contextmanager
from typing import Dict, List, NamedTuple, Tuple

import spconv.pytorch as spconv
import torch
from absl import logging as absl_logging
from pytorch_quantization import calib
from pytorch_quantization.nn import TensorQuantizer
from pytorch_quantization.tensor_quant import QuantDescriptor, fake_tensor_quant
from spconv.pytorch.conv import SparseConvolution
from torch import nn
from tqdm.auto import tqdm

from helpers.errors import WorkbookError
from helpers.model import ResidualAdd

CALIBRATE_HINT = "run helpers.quantize.calibrate(model, batches) with at least one scan first"


class QuantSparseConv(SparseConvolution):
    """A sparse conv with a bias, an optional fused ReLU and int8 fake quantization of input and weight."""

    def __init__(self, ndim, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 subm=False, output_padding=0, transposed=False, inverse=False, indice_key=None, algo=None):
        super().__init__(ndim, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias=True, subm=subm, output_padding=output_padding, transposed=transposed,
                         inverse=inverse, indice_key=indice_key, algo=algo)
        self.input_quantizer = TensorQuantizer(QuantDescriptor(num_bits=8, calib_method="histogram"))  # per tensor
        self.weight_quantizer = TensorQuantizer(QuantDescriptor(num_bits=8, axis=(0,)))  # per C_out, max calib
        self.activation = "None"  # "ReLU" once fuse_relu has fused the following ReLU
        self.precision = "int8"  # of the input: "int8" or "fp16"
        self.output_precision = "int8"
        self.layer_name = ""  # module path, set by quantize_scn; names the layer in error messages

    @classmethod
    def from_float(cls, conv: SparseConvolution) -> "QuantSparseConv":
        """The same conv (arguments, weight, bias or zeros) as a QuantSparseConv on the same device."""
        quant = cls(conv.ndim, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.subm, conv.output_padding, conv.transposed, conv.inverse,
                    conv.indice_key, conv.algo)
        quant = quant.to(device=conv.weight.device, dtype=conv.weight.dtype).train(conv.training)
        with torch.no_grad():
            quant.weight.copy_(conv.weight)  # [C_out, k0, k1, k2, C_in]
            quant.bias.copy_(conv.bias if conv.bias is not None else torch.zeros_like(quant.bias))  # [C_out]
        return quant

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        features = self.input_quantizer(x.features)  # [N, C_in]
        weight = self.weight_quantizer(self.weight)  # [C_out, k0, k1, k2, C_in]
        # no bias and no activation for spconv: its fused path does not run on the CPU
        out = self._conv_forward(self.training, x.replace_feature(features), weight, None)
        features = out.features + self.bias  # [M, C_out]
        if self.activation == "ReLU":
            features = torch.relu(features)
        return out.replace_feature(features)


class QuantAdd(nn.Module):
    """`branch + identity` with one int8 quantizer shared by both inputs (the engine wants one scale)."""

    def __init__(self):
        super().__init__()
        self.quantizer = TensorQuantizer(QuantDescriptor(num_bits=8, calib_method="histogram"))  # per tensor
        self.precision = "int8"
        self.output_precision = "int8"
        self.layer_name = ""

    def forward(self, branch: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        return self.quantizer(branch) + self.quantizer(identity)  # [N, C] + [N, C]


def set_module(model: nn.Module, path: str, new: nn.Module):
    """Put `new` at `path` ("a.b.0") by setattr on its parent, so the module keeps its name."""
    parent_path, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_path), child, new)


def quantize_scn(model: nn.Module) -> nn.Module:
    """In place: every sparse conv becomes a QuantSparseConv and every ResidualAdd a QuantAdd."""
    for path, module in list(model.named_modules()):
        if isinstance(module, (QuantSparseConv, QuantAdd)):
            continue  # already quantized: running this twice changes nothing
        if path == "" and isinstance(module, (SparseConvolution, ResidualAdd)):
            raise WorkbookError("quantize_scn needs a network that contains the layer; "
                                "for a single conv use QuantSparseConv.from_float(conv)")
        if isinstance(module, SparseConvolution):
            new = QuantSparseConv.from_float(module)
        elif isinstance(module, ResidualAdd):
            new = QuantAdd().train(module.training)
        else:
            continue
        new.layer_name = path
        set_module(model, path, new)
    return model


class Call(NamedTuple):
    """One module call seen while tracing: the module, its input feature tensors and its output features."""
    module: nn.Module
    inputs: Tuple[torch.Tensor, ...]  # kept alive, so their id()s stay unique until we are done
    output: torch.Tensor


def features_of(x):
    """The feature matrix [N, C] of a SparseConvTensor, or the tensor itself."""
    return x.features if isinstance(x, spconv.SparseConvTensor) else x


def trace_calls(model: nn.Module, voxels: torch.Tensor, coords: torch.Tensor) -> List[Call]:
    """Run model(voxels, coords) once and record every layer call (convs, BN, ReLU, adds, ...) in order."""
    if model.training:
        raise WorkbookError("folding and fusing need the model in eval mode; call model.eval() first")
    calls = []

    def record(module, inputs, output):
        if inputs:  # hooks see positional inputs only
            calls.append(Call(module, tuple(features_of(x) for x in inputs), features_of(output)))

    layers = [m for m in model.modules() if not isinstance(m, TensorQuantizer)
              and (isinstance(m, (SparseConvolution, QuantAdd)) or len(list(m.children())) == 0)]
    handles = [m.register_forward_hook(record) for m in layers]
    try:
        with torch.no_grad():
            model(voxels, coords)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def conv_followers(model, voxels, coords, kind) -> List[Tuple[QuantSparseConv, nn.Module]]:
    """(conv, module) pairs where a `kind` module (BatchNorm1d or ReLU) reads a QuantSparseConv's output."""
    calls = trace_calls(model, voxels, coords)
    made_by = {}  # id(tensor) -> the module that last wrote it (an in-place ReLU writes its own input)
    reads = Counter()  # (id(tensor), writer) -> how many layer calls read that value
    found = []  # (conv, module, value read)
    for c in calls:
        if isinstance(c.module, nn.Identity):
            continue  # a folded BN: passes its input on unchanged
        writer = made_by.get(id(c.inputs[0]))
        if isinstance(c.module, kind) and isinstance(writer, QuantSparseConv):
            found.append((writer, c.module, (id(c.inputs[0]), writer)))
        reads.update((id(x), made_by.get(id(x))) for x in c.inputs)
        made_by[id(c.output)] = c.module
    uses = Counter(c.module for c in calls)  # how often each module object was called
    for conv, module, value in found:
        what = f"the {kind.__name__} after {conv.layer_name}"
        if uses[module] > 1:
            raise WorkbookError(f"{what} is one module used {uses[module]} times; "
                                f"use a separate {kind.__name__} module for each use so it can be fused")
        if reads[value] > 1:
            raise WorkbookError(f"{what} cannot be fused: other layers also read that conv's output; "
                                f"let only the {kind.__name__} read it")
    return [(conv, module) for conv, module, _ in found]


def replace_everywhere(model: nn.Module, old: nn.Module, new: nn.Module):
    """Put `new` at every path where `old` sits."""
    paths = [path for path, m in model.named_modules(remove_duplicate=False) if m is old]
    for path in paths:
        set_module(model, path, new)


def fold_bn(model: nn.Module, voxels: torch.Tensor, coords: torch.Tensor) -> nn.Module:
    """Fold every BatchNorm1d that follows a QuantSparseConv into its weight and bias; the BN becomes Identity."""
    for conv, bn in conv_followers(model, voxels, coords, nn.BatchNorm1d):
        if bn.running_var is None:
            raise WorkbookError(f"the BatchNorm1d after {conv.layer_name} has no running statistics to fold")
        gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)  # [C_out]
        beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_var)  # [C_out]
        scale = gamma / torch.sqrt(bn.running_var + bn.eps)  # [C_out]
        with torch.no_grad():
            conv.weight.mul_(scale.view(-1, *[1] * (conv.weight.dim() - 1)))  # [C_out, k0, k1, k2, C_in]
            conv.bias.copy_((conv.bias - bn.running_mean) * scale + beta)  # [C_out]
        replace_everywhere(model, bn, nn.Identity())
    return model


def fuse_relu(model: nn.Module, voxels: torch.Tensor, coords: torch.Tensor) -> nn.Module:
    """Fuse every ReLU that reads a conv's output into that conv (activation="ReLU"). Run fold_bn first."""
    for conv, relu in conv_followers(model, voxels, coords, nn.ReLU):
        conv.activation = "ReLU"
        replace_everywhere(model, relu, nn.Identity())
    return model  # ReLUs after an add or anything else stay ReLU nodes


def fuse(model: nn.Module, voxels: torch.Tensor, coords: torch.Tensor) -> nn.Module:
    """fold_bn, then fuse_relu (a ReLU after a BN only follows the conv once the BN is gone)."""
    return fuse_relu(fold_bn(model, voxels, coords), voxels, coords)


def set_precision(model: nn.Module, int8=True, fp16_first_input=True, fp16_last_output=True) -> nn.Module:
    """int8 (or fp16) for every quantized layer; the first conv reads fp16 and the last conv writes fp16."""
    layers = [m for m in model.modules() if isinstance(m, (QuantSparseConv, QuantAdd))]
    convs = [m for m in layers if isinstance(m, QuantSparseConv)]
    if not convs:
        raise WorkbookError("the model has no QuantSparseConv; run helpers.quantize.quantize_scn(model) first")
    for layer in layers:
        layer.precision = layer.output_precision = "int8" if int8 else "fp16"
    if fp16_first_input:
        convs[0].precision = "fp16"
    if fp16_last_output:
        convs[-1].output_precision = "fp16"
    return model


def prepare_scn(model: nn.Module, voxels: torch.Tensor, coords: torch.Tensor) -> nn.Module:
    """quantize_scn + fold_bn + fuse_relu + set_precision: the network the exporter traces."""
    return set_precision(fuse(quantize_scn(model), voxels, coords))


def quantizers_of(module: nn.Module) -> List[Tuple[str, TensorQuantizer]]:
    """("input" | "weight" | "add", quantizer) of one quantized layer; [] for any other module."""
    if isinstance(module, QuantSparseConv):
        return [("input", module.input_quantizer), ("weight", module.weight_quantizer)]
    if isinstance(module, QuantAdd):
        return [("add", module.quantizer)]
    return []


def named_quantizers(model: nn.Module) -> List[Tuple[str, str, TensorQuantizer]]:
    """(layer path, "input" | "weight" | "add", quantizer) for every quantizer, in module order."""
    return [(path, kind, q) for path, m in model.named_modules() for kind, q in quantizers_of(m)]


def set_quantizers(model: nn.Module, enabled: bool):
    """Switch every quantizer on (fake int8) or off (plain float)."""
    for _, _, quantizer in named_quantizers(model):
        if enabled:
            quantizer.enable()
        else:
            quantizer.disable()


@contextmanager
def quantizers_disabled(model: nn.Module):
    """`with quantizers_disabled(model):` runs float; each quantizer's state comes back on exit."""
    saved = [(q, q._disabled) for _, _, q in named_quantizers(model)]
    try:
        for quantizer, _ in saved:
            quantizer.disable()
        yield model
    finally:
        for quantizer, disabled in saved:
            quantizer._disabled = disabled


def mse_amax(calibrator: calib.HistogramCalibrator, start_bin: int = 128) -> float:
    """pytorch-quantization's "mse" amax without its hard-coded .cuda(): the bin centre with least int8 error."""
    if calibrator._calib_hist is None:
        return float("nan")  # saw no data; check_calibrated names the layer
    counts = calibrator._calib_hist.float().cpu()  # [B]
    edges = calibrator._calib_bin_edges.float().cpu()[:counts.numel() + 1]  # [B + 1]; a grown one may have an extra
    centers = (edges[1:] + edges[:-1]) / 2  # [B]
    candidates = centers[start_bin:, None]  # [A, 1] amax values to try, 32 at a time (cache-sized)
    errors = torch.cat([((fake_tensor_quant(centers.expand(len(amax), -1), amax, 8) - centers) ** 2 * counts).mean(1)
                        for amax in candidates.split(32)])  # [A] weighted squared int8 error per candidate
    return float(candidates[int(errors.argmin())])


def fresh_calibrator(quantizer: TensorQuantizer):
    """A new, empty calibrator of the same kind (reset() would keep a histogram's grown bin count)."""
    kind = type(quantizer._calibrator)  # HistogramCalibrator or MaxCalibrator
    return kind(num_bits=quantizer.num_bits, axis=quantizer.axis, unsigned=quantizer.unsigned)


def calibrate(model: nn.Module, batches, method: str = "mse", progress: bool = True) -> nn.Module:
    """Run (voxels, coords) batches through the model to collect statistics, then load every amax."""
    if len(batches) == 0:
        raise WorkbookError("calibrate got no batches; pass a list of (voxels, coords) pairs with at least one scan")
    quantizers = [q for _, _, q in named_quantizers(model)]
    if not quantizers:
        raise WorkbookError("the model has no quantizers; run helpers.quantize.quantize_scn(model) first")
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # pytorch-quantization warns once per quantizer otherwise
    try:
        for q in quantizers:
            q._calibrator = fresh_calibrator(q)  # a second calibrate() starts afresh
            q.enable()
            q.disable_quant()
            q.enable_calib()
        with torch.no_grad():
            for voxels, coords in tqdm(batches, desc="calibrating", disable=not progress):
                model(voxels, coords)
        for q in quantizers:
            if isinstance(q._calibrator, calib.MaxCalibrator):
                q.load_calib_amax(strict=False)  # per-channel [C_out, 1, 1, 1, 1]; takes no method
            elif method == "mse":
                q.amax = mse_amax(q._calibrator)
            else:
                q.load_calib_amax(method=method, strict=False)  # "entropy" or "percentile"
            q.to(batches[0][0].device)  # some calibrators return amax on the CPU
    finally:
        for q in quantizers:
            q.disable_calib()
            q.enable_quant()
        absl_logging.set_verbosity(verbosity)
    check_calibrated(model)  # a layer that saw no data (or only zeros) is named here
    return model


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
        raise WorkbookError("the model has no quantizers; run helpers.quantize.quantize_scn(model) first")
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
    """The int8 dynamic-range attributes of every quantized layer, keyed by module.

    All amax values reach the host in ONE copy: on a GPU each separate .item() would wait for all
    queued work, and a trace would pay that wait about fifty times.
    """
    layers = [(m, kind, q) for m in model.modules() for kind, q in quantizers_of(m)]
    if not layers or any(q.amax is None for _, _, q in layers):
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


def compare_outputs(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Cosine similarity and largest absolute difference of two outputs of the same shape."""
    if a.shape != b.shape:
        raise WorkbookError(f"cannot compare outputs of shapes {list(a.shape)} and {list(b.shape)}")
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=0)
    return {"cosine": float(cosine), "max_abs": float((a - b).abs().max())}


def int8_cost(model: nn.Module, voxels: torch.Tensor, coords: torch.Tensor) -> dict:
    """How far the fake-int8 output is from the float output on one scan: {"cosine", "max_abs"}."""
    check_calibrated(model)
    with torch.no_grad(), quantizers_disabled(model):  # every quantizer's state is restored afterwards
        reference = model(voxels, coords)  # float
        set_quantizers(model, True)
        quantized = model(voxels, coords)  # fake int8
    return compare_outputs(quantized, reference)
