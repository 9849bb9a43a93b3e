"""The toy exporter: standard ONNX that the checker accepts and onnxruntime runs like PyTorch."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from helpers.errors import WorkbookError
from helpers.toy import TOY_REGISTRY, ToyAdd, ToyNet, export_toy, make_toy_input, trace_toy
from helpers.trace.registry import Registry

EXPECTED_NODES = [  # (name, op, inputs, outputs): the trace of ToyNet on [1, 3, 8, 8]
    ("conv0", "Conv", ["0", "conv0.weight", "conv0.bias"], ["1"]),
    ("relu0", "Relu", ["1"], ["2"]),
    ("conv1", "Conv", ["2", "conv1.weight", "conv1.bias"], ["3"]),
    ("add0", "Add", ["3", "2"], ["4"]),
    ("relu1", "Relu", ["4"], ["5"]),
    ("transpose0", "Transpose", ["5"], ["6"]),
    ("reshape0", "Reshape", ["6", "reshape0.shape"], ["7"]),  # reads the contiguous copy, an alias of "6"
    ("gemm0", "Gemm", ["7", "gemm0.weight", "gemm0.bias"], ["8"]),
    ("reshape1", "Reshape", ["8", "reshape1.shape"], ["9"]),
]


def run_onnx(model: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"0": x.numpy()})[0]


def originals():
    """What the patched classes hold before and after a trace (a missing entry is None)."""
    return [(p.owner, p.name, p.owner.__dict__.get(p.name)) for p in TOY_REGISTRY.patches]


def test_onnxruntime_matches_pytorch():
    model, x = ToyNet().eval(), make_toy_input()
    proto = export_toy(model, x)
    with torch.no_grad():
        expected = model(x).numpy()  # [1, 8, 8, 4]
    got = run_onnx(proto, x)
    assert got.shape == expected.shape == (1, 8, 8, 4)
    assert np.abs(got - expected).max() < 1e-5


def test_checker_passes_with_standard_ops_only():
    proto = export_toy(ToyNet(), make_toy_input())
    onnx.checker.check_model(proto, full_check=True)  # raises on any problem
    assert {n.domain for n in proto.graph.node} == {""}
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 13)]


def test_node_list_is_as_expected():
    tracer, _ = trace_toy(ToyNet(), make_toy_input())
    assert [(n.name, n.op, n.inputs, n.outputs) for n in tracer.nodes] == EXPECTED_NODES
    attributes = {n.name: n.attributes for n in tracer.nodes}
    assert attributes["conv0"] == dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1],
                                       group=1)
    assert attributes["transpose0"] == dict(perm=[0, 2, 3, 1])
    assert attributes["gemm0"] == dict(transB=1)
    assert tracer.initializers["reshape0.shape"].tolist() == [64, 8]  # view(-1, 8): -1 resolved
    assert tracer.initializers["reshape1.shape"].tolist() == [1, 8, 8, 4]
    assert tracer.initializers["reshape0.shape"].dtype == torch.int64


def test_originals_are_restored_after_tracing_and_after_an_error():
    before = originals()
    assert "permute" not in torch.Tensor.__dict__  # inherited from torch._C.TensorBase
    trace_toy(ToyNet(), make_toy_input())
    assert originals() == before

    class Broken(ToyNet):
        def forward(self, x):
            super().forward(x)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        trace_toy(Broken(), make_toy_input())
    assert originals() == before
    assert "permute" not in torch.Tensor.__dict__ and "reshape" not in torch.Tensor.__dict__


def test_two_exports_are_byte_identical(tmp_path):
    first = export_toy(ToyNet(), make_toy_input(), tmp_path / "a.onnx")
    second = export_toy(ToyNet(), make_toy_input(), tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert first.SerializeToString(deterministic=True) == second.SerializeToString(deterministic=True)
    assert onnx.load(str(tmp_path / "a.onnx")) == first


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b = ToyNet(seed=1), ToyNet(seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(ToyNet(seed=2).conv0.weight, a.conv0.weight)


def test_permutes_outside_the_network_are_not_recorded():
    class WithSideWork(ToyNet):
        def forward(self, x):
            torch.ones(2, 3).permute(1, 0).reshape(6)  # not derived from the input: no node
            return super().forward(x)

    tracer, _ = trace_toy(WithSideWork(), make_toy_input())
    assert len(tracer.nodes) == len(EXPECTED_NODES)


def test_a_new_handler_extends_a_copy_of_the_registry():
    registry = Registry()
    registry.patches = list(TOY_REGISTRY.patches)

    @registry.register(nn.Sigmoid, "forward")
    def sigmoid(tracer, y, module, x):
        tracer.add_node("Sigmoid", [tracer.tensor_id(x)], y, {})

    model, x = nn.Sequential(ToyNet(), nn.Sigmoid()).eval(), make_toy_input()
    proto = export_toy(model, x, registry=registry)
    assert proto.graph.node[-1].op_type == "Sigmoid"
    with torch.no_grad():
        assert np.abs(run_onnx(proto, x) - model(x).numpy()).max() < 1e-5
    assert nn.Sigmoid not in TOY_REGISTRY.handled_types()


def test_unhandled_module_and_bad_input_are_clear_errors():
    with pytest.raises(WorkbookError, match="Sigmoid"):
        export_toy(nn.Sequential(ToyNet(), nn.Sigmoid()), make_toy_input())
    with pytest.raises(WorkbookError, match="float32"):
        export_toy(ToyNet(), make_toy_input().double())
    bad = ToyNet()
    bad.conv0.padding = "same"
    with pytest.raises(WorkbookError, match="padding"):
        export_toy(bad, make_toy_input())
    assert isinstance(ToyNet().add0, ToyAdd)
