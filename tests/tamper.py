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
