"""check_contract(model): every way a saved SCN graph breaks the contract (an empty list: it passes).

The contract is docs/ONNX_CONTRACT.md: what the engine's ONNX parser reads. It is stated here again,
on its own, and not imported from the exporter, so that a naming or typing bug in the exporter is
caught here instead of being agreed with. The parser reads each attribute through an accessor of one
ONNX type; an attribute that is missing, or stored with another type, silently reads as 0, "" or [].
So the checker checks each attribute's type, not only that it is there, and reads an attribute's value
only when its type is the one the parser reads (a damaged file cannot crash the checker). Attributes
whose value the contract fixes (`inverse`, `groups`, Transpose's `dims`, ...) are checked against it.
"""
import math
from typing import Dict, List, Optional

from onnx import AttributeProto, TensorProto

from helpers.onnx_file import load_onnx

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
    return AttributeProto.AttributeType.Name(kind) if kind in AttributeProto.AttributeType.values() else str(kind)


def typed_attributes(node) -> dict:
    """The node's attributes that the contract names, read only where their ONNX type is the parser's:
    an attribute of another type is left out (attribute_problems names it), so no value of a surprising
    type (a TensorProto, a list of bytes) reaches the checks below."""
    wanted = {**INT8_RANGES.get(node.op_type, {}), **OPTIONAL.get(node.op_type, {}), **REQUIRED.get(node.op_type, {})}
    values = {}
    for x in node.attribute:
        kind = wanted.get(x.name)
        if kind is None or x.type != kind:
            continue
        if kind == INT:
            values[x.name] = x.i
        elif kind == INTS:
            values[x.name] = list(x.ints)
        elif kind == FLOAT:
            values[x.name] = x.f
        elif kind == FLOATS:
            values[x.name] = list(x.floats)
        else:
            values[x.name] = x.s.decode("utf-8", "replace")
    return values


def check_contract(model, op_counts: Optional[Dict[str, int]] = None, int8: Optional[bool] = None) -> List[str]:
    """Every violation of the contract, as readable sentences. `int8=None` infers it from the file."""
    g = load_onnx(model).graph
    problems: List[str] = []
    values = [typed_attributes(n) for n in g.node]
    if int8 is None:
        int8 = any(a.get("precision") == "int8" for a in values)
    problems += graph_problems(g, values, int8)
    problems += layout_problems(g, values)
    inits = {t.name: t for t in g.initializer}
    counters, produced_by = {}, {"0": "input"}
    formats = [a.get("format") for n, a in zip(g.node, values) if n.op_type == "ScatterDense"]
    layout = formats[0] if formats else None  # the voxel order fixes Transpose's dims
    dense = None  # the shape of the dense map after ScatterDense (and Transpose): fixes Reshape's dims
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
        found, dense = fixed_problems(node, a, layout, dense)
        problems += [f"{where}: {p}" for p in found]
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
    shape = list(typed_attributes(scatter).get("output_shape", []))  # [N, C, a, b, c]
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


TRANSPOSE_DIMS = {"xyz": [0, 1, 4, 2, 3], "zyx": [0, 1, 2, 4, 3]}  # [1, C, a, b, c] -> [1, C, z, ., .]
CONV_FIXED = dict(ndim=3, groups=1, transposed=0, inverse=0, output_padding=[0, 0, 0])  # one SCN conv


def per_axis(values, low: int) -> bool:
    """Three ints (one per axis), each >= low."""
    return isinstance(values, list) and len(values) == 3 and all(v >= low for v in values)


def fixed_problems(node, a: dict, layout: Optional[str], dense: Optional[list]):
    """Attributes whose values the contract fixes: (problems, the dense shape after this node)."""
    problems = []
    if node.op_type == "SparseConvolution":
        for name, value in CONV_FIXED.items():
            if name in a and a[name] != value:
                problems.append(f"attribute {name!r} is {a[name]}, the contract fixes it at {value}")
        for name, low in dict(kernel_size=1, stride=1, dilation=1, padding=0, input_spatial_shape=1,
                              output_spatial_shape=1).items():
            if name in a and not per_axis(a[name], low):
                problems.append(f"attribute {name!r} is {a[name][:6]}, expected 3 values (one per axis), each >= {low}")
        if a.get("subm", 0) not in (0, 1):
            problems.append(f"attribute 'subm' is {a['subm']}, expected 0 or 1")
        if a.get("output_bound", 1) < 1:
            problems.append(f"attribute 'output_bound' is {a['output_bound']}, expected >= 1")
        for name in ("in_channels", "out_channels"):
            if a.get(name, 1) < 1:
                problems.append(f"attribute {name!r} is {a[name]}, expected >= 1")
    elif node.op_type == "ScatterDense":
        grid, shape = a.get("input_spatial_shape"), a.get("output_shape")
        if grid is not None and not per_axis(grid, 1):
            problems.append(f"attribute 'input_spatial_shape' is {grid[:6]}, expected 3 values, each >= 1")
        elif shape is not None:
            if len(shape) != 5 or shape[0] != 1 or shape[1] < 1 or (grid is not None and shape[2:] != grid):
                problems.append(f"attribute 'output_shape' is {shape[:6]}, expected [1, C] + input_spatial_shape")
            else:
                return problems, shape
    elif node.op_type == "Transpose" and "dims" in a:
        allowed = [TRANSPOSE_DIMS[layout]] if layout in TRANSPOSE_DIMS else list(TRANSPOSE_DIMS.values())
        if a["dims"] not in allowed:
            problems.append(f"attribute 'dims' is {a['dims'][:6]}, the contract fixes it at "
                            f"{' or '.join(map(str, allowed))}")
        elif dense is not None:
            return problems, [dense[i] for i in a["dims"]]
        return problems, None
    elif node.op_type == "Reshape" and "dims" in a and dense is not None:
        want = [dense[0], dense[1] * dense[2], dense[3], dense[4]]  # [1, C * z, rows, columns]: the BEV map
        if a["dims"] != want:
            problems.append(f"attribute 'dims' is {a['dims'][:6]}, the dense map {dense} fixes it at {want}")
    return problems, dense if node.op_type in ("Relu", "Add") else None


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
        elif list(t.dims) != want or any(d < 0 for d in t.dims):
            problems.append(f"initializer {t.name} has dims {list(t.dims)[:8]}, expected {want}")
        elif len(t.raw_data) != 2 * math.prod(t.dims):  # Python ints: dims that wrap int64 cannot match
            problems.append(f"initializer {t.name} holds {len(t.raw_data)} bytes, expected {2 * math.prod(t.dims)}")
    if a.get("subm") == 1 and not a.get("rulebook"):
        problems.append("a submanifold conv needs a non-empty rulebook")
    if a.get("activation") not in ("ReLU", "None"):
        problems.append("activation must be 'ReLU' or 'None'")
    ranges = a.get("weight_dynamic_ranges")
    if isinstance(ranges, list) and len(ranges) != a.get("out_channels"):
        problems.append(f"weight_dynamic_ranges has {len(ranges)} values for {a.get('out_channels')} channels")
    return problems
