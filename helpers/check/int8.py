"""The int8-faithful re-run of a saved SCN graph: what the engine computes, from the file alone.

    run_file(path, voxels, coords)              the file's output with its own precisions and dynamic ranges
    run_file(path, voxels, coords, int8=False)  the same graph in float (every layer unquantized)
    fake_quant(x, amax)                         pytorch-quantization 2.1.3's fake quantization, op for op

Like NVIDIA's parser it reads only `op_type`, the attributes through their types (a missing attribute
or one of another type reads as 0 / "" / []), and FLOAT16 `raw_data` initializers. Per node:

- SparseConvolution with `precision == "int8"` (only that exact string selects int8): the input is
  quantized per tensor with `input_dynamic_range`, the weight per output channel with
  `weight_dynamic_ranges`: q = clamp(round_half_even(x * 127 / range), -127, 127), value q / (127 / range).
  The products are summed by spconv on those de-quantized fp32 values, as the fake-quant PyTorch model
  does; `accumulate="int32"` sums the int8 integers exactly instead (what the engine's int32
  accumulator does) and scales once. Then bias, then the fused ReLU when `activation == "ReLU"`.
- SparseConvolution with any other precision ("fp16"): no quantization; the file's fp16 weights on the
  fp16 graph input, computed in `dtype` (fp32 on the CPU, as the fake-quant model runs there).
- Add: each input quantized with its own range (`input0_dynamic_range`, `input1_dynamic_range`), summed.
- Relu, ScatterDense (scatter to `output_shape`), Transpose (`dims`), Reshape (`dims`).

Where one tensor has two int8 readers (a block's input feeds conv1 and the add), each reader quantizes it
with its own range, as the fake-quant model does. The first conv's `input_spatial_shape` stands for the
grid that the application hands the engine at run time.
"""
import math
from typing import Callable, Dict, List, Optional, Union

import numpy as np
import spconv.pytorch as spconv
import torch
from onnx import AttributeProto, TensorProto

from helpers.check.compare import compare
from helpers.errors import WorkbookError
from helpers.model import place
from helpers.onnx_file import load_onnx

MAX_BOUND = 127.0  # 8-bit signed, narrow range: -127..127
EPSILON = 1.0 / (1 << 24)  # pytorch-quantization quantizes everything to 0 below this amax


class NotExecutable(Exception):
    """The file cannot be executed as the engine would (a node or initializer it cannot use); names the node."""


# ----------------------------------------------------------------------------- what the parser reads
DEFAULTS = {AttributeProto.INT: 0, AttributeProto.INTS: [], AttributeProto.FLOAT: 0.0,
            AttributeProto.FLOATS: [], AttributeProto.STRING: ""}


def attribute(node, name: str, kind: int):
    """The attribute as the engine's typed accessor reads it: missing or of another type -> 0 / [] / ""."""
    for a in node.attribute:
        if a.name == name:
            if a.type != kind:
                return DEFAULTS[kind]
            if kind == AttributeProto.INT:
                return a.i
            if kind == AttributeProto.INTS:
                return list(a.ints)
            if kind == AttributeProto.FLOAT:
                return a.f
            if kind == AttributeProto.FLOATS:
                return list(a.floats)
            return a.s.decode()
    return DEFAULTS[kind]


def ints(node, name):
    return attribute(node, name, AttributeProto.INTS)


def string(node, name):
    return attribute(node, name, AttributeProto.STRING)


def fp16_initializer(tensor: TensorProto, node_name: str) -> torch.Tensor:
    """A FLOAT16 raw_data initializer as fp32 (exact); anything else is what the engine cannot use."""
    size = math.prod(tensor.dims)  # Python ints: dims that wrap around in int64 cannot match the bytes
    if any(d < 0 for d in tensor.dims):
        raise NotExecutable(f"{node_name}: initializer {tensor.name} has negative dims {list(tensor.dims)[:8]}")
    if tensor.data_type != TensorProto.FLOAT16 or len(tensor.raw_data) != 2 * size:
        raise NotExecutable(f"{node_name}: initializer {tensor.name} is not FLOAT16 raw_data of {size} values "
                            f"({2 * size} bytes); the engine would build this layer with empty weights")
    values = np.frombuffer(tensor.raw_data, dtype="<f2").reshape(list(tensor.dims))
    return torch.from_numpy(values.astype(np.float32))


def is_int8(node) -> bool:
    """Only the exact string "int8" selects Int8 in the engine; "INT8", "fp16" and "" mean fp16."""
    return string(node, "precision") == "int8"


# ----------------------------------------------------------------------------- quantization
def quantized_integers(x: torch.Tensor, amax: torch.Tensor):
    """(q, scale): q = clamp(round(x * scale), -127, 127) with scale = 127 / amax, in fp32, as
    pytorch_quantization.tensor_quant._tensor_quant (2.1.3) computes it, op for op."""
    amax = amax.to(device=x.device, dtype=torch.float32)
    scale = torch.tensor(MAX_BOUND, device=x.device) / amax  # [] or [C_out, 1, 1, 1, 1]
    tiny = amax <= EPSILON
    scale = torch.where(tiny, torch.zeros_like(scale), scale)  # "Value quantized with amax=0 should all be 0"
    q = torch.clamp((x.float() * scale).round_(), -MAX_BOUND, MAX_BOUND)  # round half to even
    return q, torch.where(tiny, torch.ones_like(scale), scale)


def fake_quant(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """Quantize to int8 and back, bit for bit as pytorch-quantization 2.1.3's fake_tensor_quant:
    the integers in fp32, then `q / scale` in the input's dtype (fp16 inputs: q and scale rounded to fp16)."""
    q, scale = quantized_integers(x, amax)
    if x.dtype == torch.float16:
        q = q.half()
    return q / scale.to(x.dtype)


def amax_tensor(values, node_name: str, what: str) -> torch.Tensor:
    values = values if isinstance(values, list) else [values]
    if not values or not all(np.isfinite(v) and v > 0 for v in values):
        raise NotExecutable(f"{node_name}: {what} must be finite and > 0 for an int8 layer, found {values[:4]}")
    return torch.tensor(values, dtype=torch.float32)


# ----------------------------------------------------------------------------- the ops
def sparse_conv(node, x: spconv.SparseConvTensor, weight: torch.Tensor, bias: torch.Tensor, int8: bool,
                accumulate: str) -> spconv.SparseConvTensor:
    """One SparseConvolution node: quantize (int8 layers), convolve, add the bias, fused ReLU."""
    if attribute(node, "inverse", AttributeProto.INT):
        raise NotExecutable(f"{node.name}: inverse convolutions are not executed here")
    c_out, c_in = weight.shape[0], weight.shape[-1]  # the engine takes channels from the weight dims
    if x.features.shape[1] != c_in:
        raise NotExecutable(f"{node.name}: input has {x.features.shape[1]} channels, weight expects {c_in}")
    subm = attribute(node, "subm", AttributeProto.INT)
    kind = spconv.SubMConv3d if subm else spconv.SparseConv3d
    rulebook = string(node, "rulebook")
    features, dtype, device = x.features, x.features.dtype, x.features.device
    if int8:
        ranges = attribute(node, "weight_dynamic_ranges", AttributeProto.FLOATS)
        if len(ranges) != c_out:
            raise NotExecutable(f"{node.name}: weight_dynamic_ranges has {len(ranges)} values for {c_out} channels")
        input_amax = amax_tensor(attribute(node, "input_dynamic_range", AttributeProto.FLOAT), node.name,
                                 "input_dynamic_range")
        weight_amax = amax_tensor(ranges, node.name, "weight_dynamic_ranges").view(-1, 1, 1, 1, 1)
        if accumulate == "int32":
            qx, sx = quantized_integers(features, input_amax)
            qw, sw = quantized_integers(weight.to(device), weight_amax)
            low = torch.remainder(qw + 8, 16) - 8  # qw = 16 * high + low, |high| <= 8, -8 <= low <= 7: every
            high = (qw - low) / 16  # partial sum of integers stays below 2^24, so fp32 sums them exactly
            both = torch.cat([high, low])  # [2 C_out, k0, k1, k2, C_in], one conv for both halves
            conv = kind(c_in, 2 * c_out, ints(node, "kernel_size"), stride=ints(node, "stride"),
                        padding=ints(node, "padding"), dilation=ints(node, "dilation"), bias=False,
                        indice_key=rulebook or None)
            conv.weight.data = both.to(device=device, dtype=torch.float32)
            y = place(conv, device)(x.replace_feature(qx))  # spconv's algorithm for the device, fp32
            acc = 16 * y.features[:, :c_out].double() + y.features[:, c_out:].double()  # the exact int32 sums
            features = (acc / (sx.double() * sw.double().view(1, -1))).to(dtype)
            y = y.replace_feature(features)
            return _bias_relu(node, y, bias)
        features = fake_quant(features, input_amax)
        weight = fake_quant(weight.to(device=device, dtype=dtype), weight_amax)
    conv = kind(c_in, c_out, ints(node, "kernel_size"), stride=ints(node, "stride"), padding=ints(node, "padding"),
                dilation=ints(node, "dilation"), bias=False, indice_key=rulebook or None)
    conv.weight.data = weight.to(device=device, dtype=dtype)
    y = place(conv, device, dtype)(x.replace_feature(features))
    return _bias_relu(node, y, bias)


def _bias_relu(node, y, bias):
    features = y.features + bias.to(device=y.features.device, dtype=y.features.dtype)  # [M, C_out]
    if string(node, "activation") == "ReLU":
        features = torch.relu(features)
    return y.replace_feature(features)


def add(node, a: torch.Tensor, b: torch.Tensor, int8: bool) -> torch.Tensor:
    """branch + identity; an int8 add quantizes each input with its own range."""
    if int8:
        a = fake_quant(a, amax_tensor(attribute(node, "input0_dynamic_range", AttributeProto.FLOAT), node.name,
                                      "input0_dynamic_range"))
        b = fake_quant(b, amax_tensor(attribute(node, "input1_dynamic_range", AttributeProto.FLOAT), node.name,
                                      "input1_dynamic_range"))
    return a + b


MAX_DENSE = 1 << 31  # values of a dense map spconv can index; a re-run checked against an output allows its size


def scatter_dense(node, x: spconv.SparseConvTensor, max_values: int = MAX_DENSE) -> torch.Tensor:
    shape = ints(node, "output_shape")
    if math.prod(shape) > max_values:  # checked before the map is allocated: the file's claim alone
        raise NotExecutable(f"{node.name}: output_shape {shape[:6]} holds {math.prod(shape)} values, more than "
                            f"the {max_values} of the output it is checked against; refusing to allocate it")
    if string(node, "format") not in ("xyz", "zyx"):
        raise NotExecutable(f"{node.name}: format {string(node, 'format')!r}, expected 'xyz' or 'zyx'")
    if list(x.spatial_shape) != ints(node, "input_spatial_shape"):
        raise NotExecutable(f"{node.name}: input grid {list(x.spatial_shape)} != input_spatial_shape "
                            f"{ints(node, 'input_spatial_shape')}")
    y = x.dense()  # [1, C, *grid], zeros where no voxel is active
    if list(y.shape) != shape:
        raise NotExecutable(f"{node.name}: dense {list(y.shape)} != output_shape {shape}")
    return y


# ----------------------------------------------------------------------------- before a node runs
def check_runnable(node, x, weight: Optional[torch.Tensor] = None) -> None:
    """Raise NotExecutable (naming the node and the attribute) for values spconv or torch cannot run with.

    The contract check already lists these; here they stop the re-run with a verdict instead of a crash
    deep inside spconv. Values are read as the engine reads them (another type reads as 0 / [] / "")."""
    op = node.op_type
    if op == "SparseConvolution":
        for name, low in (("kernel_size", 1), ("stride", 1), ("dilation", 1), ("padding", 0)):
            values = ints(node, name)
            if len(values) != 3 or min(values) < low:
                raise NotExecutable(f"{node.name}: {name} reads as {values[:6]}; expected 3 values, each >= {low}")
        if weight is not None and (weight.dim() != 5 or list(weight.shape[1:4]) != ints(node, "kernel_size")):
            raise NotExecutable(f"{node.name}: weight dims {list(weight.shape)} do not match kernel_size "
                                f"{ints(node, 'kernel_size')}; expected [C_out, k0, k1, k2, C_in]")
    elif op == "Transpose":
        dims = ints(node, "dims")
        if sorted(dims) != list(range(x.dim())):
            raise NotExecutable(f"{node.name}: dims {dims[:8]} is not an order of the input's {x.dim()} axes")
    elif op == "Reshape":
        dims = ints(node, "dims")
        if not dims or min(dims) < 1 or math.prod(dims) != x.numel():
            raise NotExecutable(f"{node.name}: dims {dims[:8]} do not hold the input's {x.numel()} values "
                                f"(shape {list(x.shape)})")


def check_grid(node) -> List[int]:
    """The first conv's input_spatial_shape as the engine reads it: 3 values, each >= 1."""
    grid = ints(node, "input_spatial_shape")
    if len(grid) != 3 or min(grid) < 1:
        raise NotExecutable(f"{node.name}: input_spatial_shape reads as {grid[:6]}; expected 3 values, each >= 1 "
                            "(the grid the application hands the engine)")
    return grid


# ----------------------------------------------------------------------------- the graph
@torch.no_grad()
def run_file(model, voxels: torch.Tensor, coords: torch.Tensor, int8: bool = True, dtype: torch.dtype = None,
             accumulate: str = "float", on_node: Optional[Callable] = None,
             on_conv: Optional[Callable] = None, max_values: int = MAX_DENSE) -> torch.Tensor:
    """Execute a saved SCN graph on (voxels [N, C_in], coords [N, 4] int32); return its output.

    int8=True: every int8 layer quantizes with the file's dynamic ranges (the engine's int8 build);
    int8=False: the float graph. `dtype` defaults to fp16 on a GPU, fp32 on the CPU. The graph input is
    FLOAT16, so the voxels are rounded to fp16 first. `on_node(node, output)` sees each node's output
    (features [M, C] of a sparse tensor, or the dense tensor); `on_conv(node, x, weight, bias)` sees each
    SparseConvolution's input sparse tensor and its fp32 weight and bias before the conv runs. `max_values`:
    the most values the dense map may hold (a file that claims a larger grid is refused before allocating it).
    """
    if accumulate not in ("float", "int32"):
        raise WorkbookError(f"accumulate={accumulate!r}; expected 'float' or 'int32'")
    model = load_onnx(model)
    graph = model.graph
    device = voxels.device
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    if not graph.node:
        raise NotExecutable("the graph has no nodes")
    inits = {t.name: t for t in graph.initializer}
    grid = check_grid(graph.node[0])
    values: Dict[str, Union[spconv.SparseConvTensor, torch.Tensor]] = {  # any memory order in, rows out
        graph.input[0].name if graph.input else "0": spconv.SparseConvTensor(
            voxels.half().to(dtype).contiguous(), coords.int().contiguous(), grid, 1)}
    for node in graph.node:
        try:
            inputs = [values[name] for name in node.input if name not in inits]
        except KeyError as err:
            raise NotExecutable(f"{node.name}: input {err.args[0]!r} is produced by no earlier node") from None
        if not inputs:
            raise NotExecutable(f"{node.name}: no tensor input")
        x = inputs[0]
        op = node.op_type
        if op == "SparseConvolution":
            if len(node.input) != 3 or node.input[1] not in inits or node.input[2] not in inits:
                raise NotExecutable(f"{node.name}: inputs must be [features, weight, bias] with both initializers")
            weight = fp16_initializer(inits[node.input[1]], node.name)  # [C_out, k0, k1, k2, C_in]
            bias = fp16_initializer(inits[node.input[2]], node.name)  # [C_out]
            check_runnable(node, x, weight)
            if on_conv is not None:
                on_conv(node, x, weight, bias)
            y = sparse_conv(node, x, weight, bias, int8 and is_int8(node), accumulate)
        elif op in ("Add", "QuantAdd"):
            if len(inputs) != 2:
                raise NotExecutable(f"{node.name}: an Add needs two tensor inputs")
            y = x.replace_feature(add(node, x.features, inputs[1].features, int8 and is_int8(node)))
        elif op == "Relu":
            y = x.replace_feature(torch.relu(x.features))
        elif op == "ScatterDense":
            y = scatter_dense(node, x, max_values)
        elif op == "Transpose":
            check_runnable(node, x)
            y = x.permute(*ints(node, "dims"))
        elif op == "Reshape":
            check_runnable(node, x)
            y = x.reshape(*ints(node, "dims"))
        else:
            raise NotExecutable(f"{node.name}: op type {op!r} is not read by the engine")
        values[node.output[0]] = y
        if on_node is not None:
            on_node(node, y.features if isinstance(y, spconv.SparseConvTensor) else y)
    out = graph.output[0].name if graph.output else graph.node[-1].output[0]
    if out not in values:
        raise NotExecutable(f"graph output {out!r} is produced by no node")
    return values[out]


# ----------------------------------------------------------------------------- per-node fingerprints
def channel_stats(tensor: torch.Tensor) -> np.ndarray:
    """[2, C] float64: per channel (axis 1) the sum and the sum of squares over every other axis.

    A few numbers per node that the exporter can save beside the output: enough to find the first node
    where two runs part, without saving every node's tensor.
    """
    t = tensor.detach()
    t = t.transpose(0, 1).reshape(t.shape[1], -1)  # [C, everything else]: a view for a dense [1, C, ...] map
    t = t[:, t.ne(0).any(0)].double()  # zeros add nothing to either sum: a dense BEV map is mostly empty cells
    return torch.stack([t.sum(1), (t * t).sum(1)]).cpu().numpy()


def node_stats_recorder(stats: Dict[str, np.ndarray]) -> Callable:
    """An on_node callback that stores channel_stats of each node's output under the node's name."""
    def record(node, output):
        name = node.name if hasattr(node, "name") else str(node)
        stats[name] = channel_stats(output)
    return record


def first_difference(reference: Dict[str, np.ndarray], candidate: Dict[str, np.ndarray], order: List[str],
                     tolerance: float) -> Optional[dict]:
    """The first node (in `order`) whose channel stats differ by more than `tolerance`, relative to the
    node's largest reference value: {"node", "channel", "relative"}; None when every node agrees."""
    for name in order:
        if name not in reference or name not in candidate:
            continue
        a, b = reference[name], candidate[name]
        if a.shape != b.shape:
            return {"node": name, "channel": None, "relative": float("inf")}
        scale = np.abs(a).max(axis=1, keepdims=True) + 1e-30  # per statistic
        relative = np.abs(a - b) / scale  # [2, C]
        if not np.isfinite(relative).all() or relative.max() > tolerance:
            worst = np.nan_to_num(relative, nan=np.inf).max(axis=0)
            return {"node": name, "channel": int(worst.argmax()), "relative": float(worst.max())}
    return None


# ----------------------------------------------------------------------------- what int8 costs, node by node
class LayerErrors:
    """What int8 costs at each node, from two runs of the file: `record(mode, node, output)` is fed every node's
    output of the float run ("float"), then of the int8 run ("int8"); `rows` grows by one row per int8 node.

    Each row: node, op, precision (of the node's input, "" where the op has none), relative RMS error
    ||int8 - float|| / ||float|| and cosine of the node's output. Errors accumulate along the graph, so a
    row shows what int8 costs up to and including that node. check_file(..., on_node=errors.record) feeds
    it from the file's own re-runs, so the chart costs no extra run.
    """

    def __init__(self):
        self.floats: Dict[str, torch.Tensor] = {}  # node -> its float output (flat, float64, on the CPU)
        self.rows: List[dict] = []

    def record(self, mode: str, node, y: torch.Tensor):
        y = y.detach().flatten().cpu()
        if mode == "float":
            self.floats[node.name] = y.clone()
            return
        a = self.floats.pop(node.name)
        keep = a.ne(0) | y.ne(0)  # where both are zero nothing adds to a norm: a dense BEV map is mostly empty cells
        a, y = a[keep].double(), y[keep].double()
        norm = float(a.norm())
        self.rows.append(dict(node=node.name, op=node.op_type, precision=string(node, "precision"),
                              relative_error=float((y - a).norm()) / norm if norm > 0 else 0.0,
                              cosine=compare(a, y)["cosine"]))


def layer_errors(model, voxels: torch.Tensor, coords: torch.Tensor, dtype: torch.dtype = None) -> List[dict]:
    """Run the file in float, then in int8, and compare each node's output: one LayerErrors row per node."""
    model = load_onnx(model)
    errors = LayerErrors()
    for mode in ("float", "int8"):
        run_file(model, voxels, coords, int8=(mode == "int8"), dtype=dtype,
                 on_node=lambda node, y, mode=mode: errors.record(mode, node, y))
    return errors.rows


def accumulation_rows(model, voxels: torch.Tensor, coords: torch.Tensor) -> List[dict]:
    """Per int8 conv, on the same input: the exact int32 sums vs spconv's fp32 sums of de-quantized values.

    Row: node, max_abs difference of the conv's output, and that relative to the output's largest value.
    (End to end the two can differ more: a sum within rounding of a .5 step flips the next layer's int8
    value by one step, and that step travels on.)
    """
    rows = []

    def both(node, x, weight, bias):
        if not is_int8(node):
            return
        outputs = []
        for accumulate in ("float", "int32"):
            fresh = spconv.SparseConvTensor(x.features, x.indices, x.spatial_shape, x.batch_size)
            fresh.indice_dict = dict(x.indice_dict)  # its own rulebook table: a strided conv adds its key once
            outputs.append(sparse_conv(node, fresh, weight, bias, True, accumulate).features)
        difference = float((outputs[0] - outputs[1]).abs().max())
        rows.append(dict(node=node.name, max_abs=difference,
                         relative=difference / max(float(outputs[0].abs().max()), 1e-30)))
    run_file(model, voxels, coords, on_conv=both)
    return rows
