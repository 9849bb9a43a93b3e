"""The static SVG picture of an ONNX graph: valid XML, one box per node, the right edges, stable bytes."""
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Dict

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers.errors import WorkbookError
from helpers.files import write_atomic
from helpers.onnx_file import load_onnx
from helpers.viz.graph_svg import graph_svg

SVG = "{http://www.w3.org/2000/svg}"


def op_counts(model_or_path) -> Dict[str, int]:
    """How many nodes of each op type, in order of first appearance, e.g. {'SparseConvolution': 21, ...}."""
    return dict(Counter(node.op_type for node in load_onnx(model_or_path).graph.node))


def save_graph_svg(model_or_path, svg_path) -> Path:
    """Write `graph_svg(...)` to `svg_path` atomically (a temporary file renamed into place)."""
    return write_atomic(svg_path, graph_svg(model_or_path))


def conv_node(i, x, y, cin, cout, rulebook="subm1"):
    """A SparseConvolution-like node in domain "spconv" and its fp16 weight and bias initializers."""
    weight = helper.make_tensor(f"spconv{i}.weight", TensorProto.FLOAT16, [cout, 3, 3, 3, cin],
                                np.zeros(cout * 27 * cin, np.float16).tobytes(), raw=True)
    bias = helper.make_tensor(f"spconv{i}.bias", TensorProto.FLOAT16, [cout],
                              np.zeros(cout, np.float16).tobytes(), raw=True)
    node = helper.make_node("SparseConvolution", [x, weight.name, bias.name], [y], name=f"conv{i}", domain="spconv",
                            in_channels=cin, out_channels=cout, kernel_size=[3, 3, 3], stride=[1, 1, 1], subm=1,
                            rulebook=rulebook, activation="ReLU", precision="fp16", output_precision="fp16")
    return node, [weight, bias]


def toy_model(graph_name="scn") -> onnx.ModelProto:
    """input "0" -> conv0 -> conv1 -> conv2 -> add0(conv2, conv0) -> relu0 -> output "5": one residual block."""
    nodes, initializers = [], []
    for i, (x, y, cin, cout) in enumerate([("0", "1", 5, 16), ("1", "2", 16, 16), ("2", "3", 16, 16)]):
        node, tensors = conv_node(i, x, y, cin, cout)
        nodes.append(node)
        initializers += tensors
    nodes.append(helper.make_node("Add", ["3", "1"], ["4"], name="add0"))
    nodes.append(helper.make_node("Relu", ["4"], ["5"], name="relu0"))
    graph = helper.make_graph(nodes, graph_name, [helper.make_tensor_value_info("0", TensorProto.FLOAT16, ["N", 5])],
                              [helper.make_tensor_value_info("5", TensorProto.FLOAT16, ["N", 16])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11), helper.make_opsetid("spconv", 1)])


def chain_model(n_nodes: int) -> onnx.ModelProto:
    """A chain of `n_nodes` Relu nodes, to check the layout of a graph as long as the SCN (40 nodes)."""
    nodes = [helper.make_node("Relu", [str(i)], [str(i + 1)], name=f"relu{i}") for i in range(n_nodes)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("0", TensorProto.FLOAT16, ["N", 5])],
                              [helper.make_tensor_value_info(str(n_nodes), TensorProto.FLOAT16, ["N", 5])])
    return helper.make_model(graph)


def boxes(root, css_class):
    """The <g> elements of the picture with this class."""
    return [g for g in root.iter(f"{SVG}g") if g.get("class") == css_class]


def test_svg_is_valid_xml_with_one_box_per_node():
    model = toy_model()
    root = ET.fromstring(graph_svg(model).encode("utf-8"))
    assert root.tag == f"{SVG}svg"
    nodes = boxes(root, "node")
    assert [g.get("data-name") for g in nodes] == [n.name for n in model.graph.node]
    for g, node in zip(nodes, model.graph.node):
        text = " ".join(t.text for t in g.iter(f"{SVG}text"))
        assert node.name in text and node.op_type in text
    assert len(boxes(root, "graph-input")) == 1 and len(boxes(root, "graph-output")) == 1


def test_edges_are_the_inputs_that_come_from_nodes_or_the_graph_input():
    model = toy_model()
    produced = {v.name for v in model.graph.input} | {o for n in model.graph.node for o in n.output}
    expected = sum(1 for n in model.graph.node for name in n.input if name in produced)
    assert expected == 6  # conv0..2 one each (weights are initializers), add0 two, relu0 one
    root = ET.fromstring(graph_svg(model).encode("utf-8"))
    edges = [p for p in root.iter(f"{SVG}path") if p.get("class") == "edge"]
    node_names = {n.name for n in model.graph.node}
    assert sum(1 for p in edges if p.get("data-to") in node_names) == expected
    assert sum(1 for p in edges if p.get("data-to") == "5") == 1  # the arrow into the graph output
    skip = [p for p in edges if p.get("data-from") == "conv0" and p.get("data-to") == "add0"]
    assert len(skip) == 1 and " C " in skip[0].get("d")  # the residual skip is an arc


def test_key_attributes_are_written_in_the_boxes():
    svg = graph_svg(toy_model())
    for text in ["5→16", "k3×3×3", "subm subm1", "ReLU", "fp16", "float16 [N, 5]"]:
        assert text in svg


def test_the_same_model_gives_the_same_bytes(tmp_path):
    path = tmp_path / "toy.onnx"
    onnx.save(toy_model(), str(path))
    first = graph_svg(toy_model())
    assert graph_svg(toy_model()) == first
    assert graph_svg(path) == first
    assert graph_svg(str(path)) == first


def test_save_graph_svg_writes_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "pictures" / "toy.svg"
    assert save_graph_svg(toy_model(), target) == target
    assert target.read_text(encoding="utf-8") == graph_svg(toy_model())
    assert [p.name for p in target.parent.iterdir()] == ["toy.svg"]


def test_op_counts():
    assert op_counts(toy_model()) == {"SparseConvolution": 3, "Add": 1, "Relu": 1}


def test_a_40_node_graph_wraps_into_columns_about_900_px_wide():
    root = ET.fromstring(graph_svg(chain_model(40)).encode("utf-8"))
    assert len(boxes(root, "node")) == 40
    assert 600 <= int(root.get("width")) <= 960
    assert int(root.get("height")) <= 1000
    edges = [p for p in root.iter(f"{SVG}path") if p.get("class") == "edge"]
    assert len(edges) == 41  # 40 node inputs + the graph output


def test_missing_file_is_a_workbook_error(tmp_path):
    with pytest.raises(WorkbookError, match="missing.onnx"):
        graph_svg(tmp_path / "missing.onnx")
