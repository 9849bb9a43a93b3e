"""check_contract(model): every way a saved SCN graph breaks the contract (an empty list: it passes)."""
import math
from typing import Dict, List, Optional

import onnx
from onnx import TensorProto, helper

from helpers.trace.tracer import NODE_PREFIX

INT, INTS, FLOAT, FLOATS, STRING = (onnx.AttributeProto.INT, onnx.AttributeProto.INTS, onnx.AttributeProto.FLOAT,
                                    onnx.AttributeProto.FLOATS, onnx.AttributeProto.STRING)
REQUIRED = {  # op -> attribute name -> type the engine expects
    "SparseConvolution": dict(
        ndim=INT, input_spatial_shape=INTS, output_spatial_shape=INTS, in_channels=INT, out_channels=INT,
        kernel_size=INTS, stride=INTS, padding=INTS, dilation=INTS, output_padding=INTS, subm=INT,
        transposed=INT, inverse=INT, groups=INT, output_bound=INT, rulebook=STRING, activation=STRING,
        input_shape=INTS, output_shape=INTS, precision=STRING, output_precision=STRING),
    "Add": dict(precision=STRING, output_precision=STRING),
    "Relu": {},
    "ScatterDense": dict(input_spatial_shape=INTS, format=STRING, output_shape=INTS),
    "Transpose": dict(dims=INTS),
    "Reshape": dict(dims=INTS),
}
INT8_RANGES = {"SparseConvolution": dict(input_dynamic_range=FLOAT, weight_dynamic_ranges=FLOATS),
               "Add": dict(input0_dynamic_range=FLOAT, input1_dynamic_range=FLOAT)}
BEVFUSION_OPS = {"SparseConvolution": 21, "Add": 8, "Relu": 8, "ScatterDense": 1, "Transpose": 1, "Reshape": 1}
CENTERPOINT_OPS = {"SparseConvolution": 21, "Add": 8, "Relu": 8, "ScatterDense": 1, "Transpose": 0, "Reshape": 1}
OP_COUNTS = {"bevfusion": BEVFUSION_OPS, "centerpoint": CENTERPOINT_OPS}  # network -> nodes per op type


def load(model) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def attributes(node) -> Dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _decoded(value):
    return value.decode() if isinstance(value, bytes) else value


def check_contract(model, op_counts: Optional[Dict[str, int]] = None, int8: Optional[bool] = None) -> List[str]:
    """Every violation of the contract, as readable sentences. `int8=None` infers it from the file."""
    model = load(model)
    g, problems = model.graph, []
    say = problems.append
    inits = {t.name: t for t in g.initializer}
    if g.name != "scn":
        say(f"graph name is {g.name!r}, expected 'scn'")
    if len(g.input) != 1 or g.input[0].type.tensor_type.elem_type != TensorProto.FLOAT16:
        say("expected exactly one FLOAT16 graph input (the voxel features [N, C_in])")
    if len(g.output) != 1 or g.output[0].type.tensor_type.elem_type != TensorProto.FLOAT16:
        say("expected exactly one FLOAT16 graph output (the dense BEV map)")
    convs = [n for n in g.node if n.op_type == "SparseConvolution"]
    if int8 is None:
        int8 = any(_decoded(attributes(n).get("precision")) == "int8" for n in g.node)
    counters, produced_by = {}, {"0": "input"}
    for i, node in enumerate(g.node):
        a = {k: _decoded(v) for k, v in attributes(node).items()}
        where = f"node {node.name or i} ({node.op_type})"
        if node.op_type not in REQUIRED:
            say(f"{where}: op type not read by the engine")
            continue
        prefix = NODE_PREFIX[node.op_type]
        expected_name = f"{prefix}{counters.get(prefix, 0)}"
        counters[prefix] = counters.get(prefix, 0) + 1
        if node.name != expected_name:
            say(f"{where}: name should be {expected_name!r} (one counter per op type, trace order)")
        if list(node.output) != [str(i + 1)]:
            say(f"{where}: output should be tensor '{i + 1}', found {list(node.output)}")
        for name in node.input[:1]:
            if name not in produced_by:
                say(f"{where}: input {name!r} is produced by no earlier node")
        types = {x.name: x.type for x in node.attribute}
        wanted = dict(REQUIRED[node.op_type])
        if int8 and a.get("precision") == "int8":
            wanted.update(INT8_RANGES.get(node.op_type, {}))
        for name, kind in wanted.items():
            if name not in types:
                say(f"{where}: attribute {name!r} missing")
            elif types[name] != kind:
                say(f"{where}: attribute {name!r} has type {types[name]}, expected {kind}")
        for name in [k for k in a if k.endswith("dynamic_range") or k.endswith("dynamic_ranges")]:
            values = a[name] if isinstance(a[name], list) else [a[name]]
            if not values or not all(math.isfinite(v) and v > 0 for v in values):
                say(f"{where}: {name} must be finite and > 0, found {values[:4]}")
        if "precision" in a and {a["precision"], a.get("output_precision")} - {"int8", "fp16"}:
            say(f"{where}: precision/output_precision must be 'int8' or 'fp16'")
        if node.op_type == "SparseConvolution":
            _check_conv(node, a, inits, where, say)
        if node.op_type == "Relu" and produced_by.get(node.input[0]) != "Add":
            say(f"{where}: a Relu must follow an Add; fuse ReLUs after convs (activation='ReLU')")
        if node.op_type == "ScatterDense" and a.get("format") not in ("xyz", "zyx"):
            say(f"{where}: format must be 'xyz' or 'zyx'")
        produced_by[node.output[0] if node.output else ""] = node.op_type
    if g.node and g.output and g.output[0].name != g.node[-1].output[0]:
        say(f"graph output {g.output[0].name!r} is not the last node's output")
    if int8 and convs:
        first, last = attributes(convs[0]), attributes(convs[-1])
        if _decoded(first["precision"]) != "fp16" or _decoded(last["output_precision"]) != "fp16":
            say("int8 graph: the first conv's precision and the last conv's output_precision must be fp16")
    if op_counts is not None:
        found = {op: sum(n.op_type == op for n in g.node) for op in op_counts}
        if found != op_counts:
            say(f"op counts {found}, expected {op_counts}")
    return problems


def _check_conv(node, a, inits, where, say):
    if len(node.input) != 3:
        say(f"{where}: inputs must be [features, weight, bias]")
        return
    weight, bias = inits.get(node.input[1]), inits.get(node.input[2])
    want_w = [a.get("out_channels")] + list(a.get("kernel_size", [])) + [a.get("in_channels")]
    for t, want in ((weight, want_w), (bias, [a.get("out_channels")])):
        if t is None:
            say(f"{where}: weight/bias initializer missing")
        elif t.data_type != TensorProto.FLOAT16 or not t.raw_data:
            say(f"{where}: initializer {t.name} must be FLOAT16 raw_data")
        elif list(t.dims) != want:
            say(f"{where}: initializer {t.name} has dims {list(t.dims)}, expected {want}")
    if a.get("subm") == 1 and not a.get("rulebook"):
        say(f"{where}: a submanifold conv needs a non-empty rulebook")
    if a.get("activation") not in ("ReLU", "None"):
        say(f"{where}: activation must be 'ReLU' or 'None'")
    ranges = a.get("weight_dynamic_ranges")
    if ranges is not None and len(ranges) != a.get("out_channels"):
        say(f"{where}: weight_dynamic_ranges has {len(ranges)} values for {a.get('out_channels')} channels")


