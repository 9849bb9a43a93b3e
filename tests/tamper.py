"""Tampered copies of a saved SCN file: one number changed, as a careless edit or a bad copy would."""
import copy

import onnx


def _attr(node, name):
    return next(a for a in node.attribute if a.name == name)


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def input_range_doubled(model: onnx.ModelProto, node: str = "conv6") -> onnx.ModelProto:
    m = copy.deepcopy(model)
    _attr(_node(m, node), "input_dynamic_range").f *= 2
    return m


def weight_range_changed(model: onnx.ModelProto, node: str = "conv3", channel: int = 5,
                         factor: float = 1.5) -> onnx.ModelProto:
    m = copy.deepcopy(model)
    _attr(_node(m, node), "weight_dynamic_ranges").floats[channel] *= factor
    return m


def add_range_swapped(model: onnx.ModelProto, node: str = "add2", other: str = "add6") -> onnx.ModelProto:
    """`node`'s input1_dynamic_range and `other`'s trade places (one quantizer per add, so both inputs of
    one add carry the same range: a swap within one add would change nothing)."""
    m = copy.deepcopy(model)
    a, b = _attr(_node(m, node), "input1_dynamic_range"), _attr(_node(m, other), "input1_dynamic_range")
    a.f, b.f = b.f, a.f
    return m


def weight_byte_flipped(model: onnx.ModelProto, node: str = "conv9", element: int = 1000) -> onnx.ModelProto:
    """Every bit of the low byte of one fp16 weight of `node` inverted (a mantissa change of up to ~25 %)."""
    m = copy.deepcopy(model)
    name = _node(m, node).input[1]
    tensor = next(t for t in m.graph.initializer if t.name == name)
    raw = bytearray(tensor.raw_data)
    raw[2 * element] ^= 0xFF  # little-endian: the low byte comes first
    tensor.raw_data = bytes(raw)
    return m


TAMPERS = {"input_dynamic_range doubled": (input_range_doubled, "conv6"),
           "weight_dynamic_ranges entry changed": (weight_range_changed, "conv3"),
           "Add range swapped": (add_range_swapped, "add2"),
           "weight byte flipped": (weight_byte_flipped, "conv9")}


# ----------------------------------------------------------------------------- damaged files (not well formed)
def _replace_attribute(node, name, value):
    """`node`'s attribute `name` replaced by `value` (any Python value onnx.helper can store), same name."""
    old = _attr(node, name)
    node.attribute.remove(old)
    node.attribute.append(onnx.helper.make_attribute(name, value))


def attribute_retyped(model: onnx.ModelProto, node: str, name: str, kind: int) -> onnx.ModelProto:
    """`node`'s attribute `name` stored with the ONNX type `kind` (AttributeProto.INT, ...), a plausible value."""
    from onnx import AttributeProto as A
    m = copy.deepcopy(model)
    n = _node(m, node)
    if kind == A.UNDEFINED:
        _attr(n, name).type = A.UNDEFINED
        return m
    value = {A.INT: 3, A.INTS: [3, 3, 3], A.FLOAT: 1.5, A.FLOATS: [1.5, 2.5], A.STRING: b"int8",
             A.STRINGS: [b"int8", b"fp16"], A.TENSOR: onnx.helper.make_tensor("t", onnx.TensorProto.FLOAT, [1], [1.0])}
    _replace_attribute(n, name, value[kind])
    return m


def attribute_set(model: onnx.ModelProto, node: str, name: str, value) -> onnx.ModelProto:
    m = copy.deepcopy(model)
    _replace_attribute(_node(m, node), name, value)
    return m


def attribute_removed(model: onnx.ModelProto, node: str, name: str) -> onnx.ModelProto:
    m = copy.deepcopy(model)
    n = _node(m, node)
    n.attribute.remove(_attr(n, name))
    return m


def weight_dims_set(model: onnx.ModelProto, node: str, dims) -> onnx.ModelProto:
    """`node`'s weight initializer claims `dims` (its bytes unchanged)."""
    m = copy.deepcopy(model)
    tensor = next(t for t in m.graph.initializer if t.name == _node(m, node).input[1])
    del tensor.dims[:]
    tensor.dims.extend(dims)
    return m


# name -> (damage, the node and attribute the verdict must name)
DAMAGES = {
    "stride UNDEFINED": (lambda m: attribute_retyped(m, "conv3", "stride", 0), "conv3", "stride"),
    "kernel_size as INT": (lambda m: attribute_retyped(m, "conv3", "kernel_size", 2), "conv3", "kernel_size"),
    "precision as TENSOR": (lambda m: attribute_retyped(m, "conv5", "precision", 4), "conv5", "precision"),
    "precision as STRINGS": (lambda m: attribute_retyped(m, "add1", "precision", 8), "add1", "precision"),
    "Transpose dims [0, 9, 9]": (lambda m: attribute_set(m, "transpose0", "dims", [0, 9, 9]), "transpose0", "dims"),
    "Reshape dims [1, -7, 3]": (lambda m: attribute_set(m, "reshape0", "dims", [1, -7, 3]), "reshape0", "dims"),
    "negative weight dims": (lambda m: weight_dims_set(m, "conv3", [-16, -3, 3, 3, 16]), "conv3", "spconv3.weight"),
    "weight dims wrapping int64": (lambda m: weight_dims_set(m, "conv3", [16, 3, 3, 3, 16, 2**62, 4]), "conv3",
                                   "spconv3.weight"),
    "input_spatial_shape missing": (lambda m: attribute_removed(m, "conv0", "input_spatial_shape"), "conv0",
                                    "input_spatial_shape"),
    "inverse 1": (lambda m: attribute_set(m, "conv2", "inverse", 1), "conv2", "inverse"),
    "groups 2": (lambda m: attribute_set(m, "conv2", "groups", 2), "conv2", "groups"),
    "stride [1, 0, 1]": (lambda m: attribute_set(m, "conv4", "stride", [1, 0, 1]), "conv4", "stride"),
}
