"""check_contract(model): every way a saved SCN graph breaks the contract (an empty list: it passes).

The contract is docs/ONNX_CONTRACT.md: what the engine's ONNX parser reads. It is stated here again,
on its own, and not imported from the exporter, so that a naming or typing bug in the exporter is
caught here instead of being agreed with. The parser reads each attribute through an accessor of one
ONNX type; an attribute that is missing, or stored with another type, silently reads as 0, "" or [].
So the checker checks each attribute's type, not only that it is there.
"""
import math
from typing import Dict, List, Optional

import numpy as np
from onnx import AttributeProto, TensorProto

from helpers.onnx_file import attributes, load_onnx

INT, INTS, FLOAT, FLOATS, STRING = (AttributeProto.INT, AttributeProto.INTS, AttributeProto.FLOAT,
                                    AttributeProto.FLOATS, AttributeProto.STRING)
NAME_PREFIX = {"SparseConvolution": "conv", "Add": "add", "Relu": "relu", "ScatterDense": "scatter",
               "Transpose": "transpose", "Reshape": "reshape"}  # node names: prefix + one counter per op type
REQUIRED = {  # op -> attribute -> the ONNX type of the parser's accessor (docs/ONNX_CONTRACT.md)
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
OPTIONAL = {"ScatterDense": dict(input_dynamic_range=FLOAT, output_layout=STRING)}  # read when present
BEVFUSION_OPS = {"SparseConvolution": 21, "Add": 8, "Relu": 8, "ScatterDense": 1, "Transpose": 1, "Reshape": 1}
CENTERPOINT_OPS = {"SparseConvolution": 21, "Add": 8, "Relu": 8, "ScatterDense": 1, "Transpose": 0, "Reshape": 1}
VOXELBACKBONE8X_OPS = {"SparseConvolution": 12, "Add": 0, "Relu": 0, "ScatterDense": 1, "Transpose": 0, "Reshape": 1}
VOXELRESBACKBONE8X_OPS = CENTERPOINT_OPS  # the same 21 / 8 / 8 op counts, on the KITTI grid
OP_COUNTS = {"bevfusion": BEVFUSION_OPS, "centerpoint": CENTERPOINT_OPS,  # network -> nodes per op type
             "voxelbackbone8x": VOXELBACKBONE8X_OPS, "voxelresbackbone8x": VOXELRESBACKBONE8X_OPS}


def type_name(kind: int) -> str:
    return AttributeProto.AttributeType.Name(kind)  # 7 -> "INTS"


def check_contract(model, op_counts: Optional[Dict[str, int]] = None, int8: Optional[bool] = None) -> List[str]:
    """Every violation of the contract, as readable sentences. `int8=None` infers it from the file."""
    g = load_onnx(model).graph
    problems: List[str] = []
    values = [attributes(n) for n in g.node]
    if int8 is None:
        int8 = any(a.get("precision") == "int8" for a in values)
    problems += graph_problems(g, values, int8)
    problems += layout_problems(g, values)
    inits = {t.name: t for t in g.initializer}
    counters, produced_by = {}, {"0": "input"}
    for i, (node, a) in enumerate(zip(g.node, values)):
        where = f"node {node.name or i} ({node.op_type})"
        if node.op_type not in REQUIRED:
            problems.append(f"{where}: op type not read by the engine")
            continue
        prefix = NAME_PREFIX[node.op_type]
        expected = f"{prefix}{counters.get(prefix, 0)}"
        counters[prefix] = counters.get(prefix, 0) + 1
        if node.name != expected:
            problems.append(f"{where}: name should be {expected!r} (one counter per op type, trace order)")
        if list(node.output) != [str(i + 1)]:
            problems.append(f"{where}: output should be tensor '{i + 1}', found {list(node.output)}")
        if node.input[:1] and node.input[0] not in produced_by:
            problems.append(f"{where}: input {node.input[0]!r} is produced by no earlier node")
        problems += [f"{where}: {p}" for p in attribute_problems(node, a, int8)]
        if node.op_type == "SparseConvolution":
            problems += [f"{where}: {p}" for p in conv_problems(node, a, inits)]
        if node.op_type == "Relu" and node.input[:1] and produced_by.get(node.input[0]) != "Add":
            problems.append(f"{where}: a Relu must follow an Add; fuse ReLUs after convs (activation='ReLU')")
        if node.op_type == "ScatterDense" and a.get("format") not in ("xyz", "zyx"):
            problems.append(f"{where}: format must be 'xyz' or 'zyx'")
        produced_by[node.output[0] if node.output else ""] = node.op_type
    if op_counts is not None:
        found = {op: sum(n.op_type == op for n in g.node) for op in op_counts}
        if found != op_counts:
            problems.append(f"op counts {found}, expected {op_counts}")
    return problems


def graph_problems(g, values: List[dict], int8: bool) -> List[str]:
    """The graph's name, its one FLOAT16 input and output, and the fp16 ends of an int8 graph."""
    problems = []
    if g.name != "scn":
        problems.append(f"graph name is {g.name!r}, expected 'scn'")
    if len(g.input) != 1 or g.input[0].type.tensor_type.elem_type != TensorProto.FLOAT16:
        problems.append("expected exactly one FLOAT16 graph input (the voxel features [N, C_in])")
    if len(g.output) != 1 or g.output[0].type.tensor_type.elem_type != TensorProto.FLOAT16:
        problems.append("expected exactly one FLOAT16 graph output (the dense BEV map)")
    elif g.node and g.output[0].name != (g.node[-1].output[:1] or [""])[0]:
        problems.append(f"graph output {g.output[0].name!r} is not the last node's output")
    convs = [a for n, a in zip(g.node, values) if n.op_type == "SparseConvolution"]
    if int8 and convs and (convs[0].get("precision") != "fp16" or convs[-1].get("output_precision") != "fp16"):
        problems.append("int8 graph: the first conv's precision and the last conv's output_precision must be fp16")
    return problems


def layout_problems(g, values: List[dict]) -> List[str]:
    """The spatial shapes along the chain agree, and ScatterDense's format is the one its shapes imply.

    Each conv reads the spatial shape its input was made on; ScatterDense scatters the last one. The BEV
    view after it (an optional Transpose, then a Reshape [N, C * D, H, W]) folds one spatial axis into the
    channels: that axis is z. z first in the spatial shape means zyx coords, z last xyz: a zyx network
    whose ScatterDense says "xyz" fails here, although every attribute is present and typed."""
    problems, spatial, scatter = [], {}, None  # spatial: tensor name -> spatial shape it lives on
    for node, a in zip(g.node, values):
        where = f"node {node.name} ({node.op_type})"
        given = [spatial.get(name) for name in node.input if name in spatial]
        if node.op_type == "SparseConvolution":
            if given and given[0] != list(a.get("input_spatial_shape", [])):
                problems.append(f"{where}: input_spatial_shape {a.get('input_spatial_shape')} but its input lives "
                                f"on {given[0]}")
            spatial[node.output[0]] = list(a.get("output_spatial_shape", []))
        elif node.op_type in ("Add", "Relu") and given:
            if any(shape != given[0] for shape in given):
                problems.append(f"{where}: adds tensors of spatial shapes {given}")
            spatial[node.output[0]] = given[0]
        elif node.op_type == "ScatterDense":
            scatter = (node, a)
            if given and given[0] != list(a.get("input_spatial_shape", [])):
                problems.append(f"{where}: input_spatial_shape {a.get('input_spatial_shape')} but the last conv "
                                f"made {given[0]}")
            if list(a.get("output_shape", []))[2:] != list(a.get("input_spatial_shape", [])):
                problems.append(f"{where}: output_shape {a.get('output_shape')} is not [N, C] + "
                                f"input_spatial_shape {a.get('input_spatial_shape')}")
    if scatter is None:
        return problems
    z_axis = folded_axis(g, values, scatter[0])
    implied = {0: "zyx", 2: "xyz"}.get(z_axis)
    format_ = scatter[1].get("format")
    if z_axis is not None and implied is None:
        problems.append(f"node {scatter[0].name} (ScatterDense): the BEV view folds the middle spatial axis (y) into "
                        "the channels; expected z first (zyx) or last (xyz)")
    elif implied is not None and format_ != implied:
        shape = scatter[1].get("input_spatial_shape")
        problems.append(f"node {scatter[0].name} (ScatterDense): format {format_!r}, but the BEV view folds axis "
                        f"{z_axis} of {shape} (z) into the channels, so the coords are {implied}; expected "
                        f"format {implied!r}")
    return problems


def folded_axis(g, values: List[dict], scatter) -> Optional[int]:
    """The spatial axis (0, 1, 2) of ScatterDense's output that the following Transpose and Reshape fold
    into the channels ([N, C, D, H, W] -> [N, C * D, H, W]), or None when no such view follows it."""
    shape = list(attributes(scatter).get("output_shape", []))  # [N, C, a, b, c]
    order = list(range(len(shape)))  # which of the scatter's axes sits at each position
    tensor = scatter.output[0]
    for node, a in zip(g.node, values):
        if list(node.input[:1]) != [tensor]:
            continue
        if node.op_type == "Transpose" and sorted(a.get("dims", [])) == order and len(shape) == 5:
            order = [order[d] for d in a["dims"]]
            tensor = node.output[0]
        elif node.op_type == "Reshape" and len(shape) == 5:
            dims, now = list(a.get("dims", [])), [shape[i] for i in order]
            if len(dims) == 4 and dims[1] == now[1] * now[2] and dims[2:] == now[3:] and order[:2] == [0, 1]:
                return order[2] - 2
            return None
    return None


def attribute_problems(node, a: dict, int8: bool) -> List[str]:
    """Missing attributes, attributes of the wrong ONNX type, precisions and ranges out of their domain."""
    problems = []
    types = {x.name: x.type for x in node.attribute}
    wanted = dict(REQUIRED[node.op_type])
    if int8 and a.get("precision") == "int8":
        wanted.update(INT8_RANGES.get(node.op_type, {}))
    for name, kind in wanted.items():
        if name not in types:
            problems.append(f"attribute {name!r} missing")
    typed = {**INT8_RANGES.get(node.op_type, {}), **OPTIONAL.get(node.op_type, {}), **wanted}
    for name, kind in typed.items():
        if name in types and types[name] != kind:
            problems.append(f"attribute {name!r} is {type_name(types[name])}, the engine reads {type_name(kind)}"
                            " (another type reads as 0, '' or [])")
    for name in [k for k in a if k.endswith(("dynamic_range", "dynamic_ranges"))]:
        found = a[name] if isinstance(a[name], list) else [a[name]]
        if not found or not all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in found):
            problems.append(f"{name} must be finite and > 0, found {found[:4]}")
    if "precision" in a and {a["precision"], a.get("output_precision")} - {"int8", "fp16"}:
        problems.append("precision/output_precision must be 'int8' or 'fp16'")
    return problems


def conv_problems(node, a: dict, inits: dict) -> List[str]:
    """[features, weight, bias] inputs, FLOAT16 raw_data initializers of the right size, rulebook, activation."""
    if len(node.input) != 3:
        return ["inputs must be [features, weight, bias]"]
    problems = []
    want_w = [a.get("out_channels")] + list(a.get("kernel_size", [])) + [a.get("in_channels")]
    for t, name, want in ((inits.get(node.input[1]), node.input[1], want_w),
                          (inits.get(node.input[2]), node.input[2], [a.get("out_channels")])):
        if t is None:
            problems.append(f"initializer {name} missing")
        elif t.data_type != TensorProto.FLOAT16 or not t.raw_data:
            problems.append(f"initializer {t.name} must be FLOAT16 raw_data")
        elif list(t.dims) != want:
            problems.append(f"initializer {t.name} has dims {list(t.dims)}, expected {want}")
        elif len(t.raw_data) != 2 * int(np.prod(t.dims)):
            problems.append(f"initializer {t.name} holds {len(t.raw_data)} bytes, expected {2 * int(np.prod(t.dims))}")
    if a.get("subm") == 1 and not a.get("rulebook"):
        problems.append("a submanifold conv needs a non-empty rulebook")
    if a.get("activation") not in ("ReLU", "None"):
        problems.append("activation must be 'ReLU' or 'None'")
    ranges = a.get("weight_dynamic_ranges")
    if isinstance(ranges, list) and len(ranges) != a.get("out_channels"):
        problems.append(f"weight_dynamic_ranges has {len(ranges)} values for {a.get('out_channels')} channels")
    return problems
