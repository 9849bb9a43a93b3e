"""A small dense network exported to STANDARD ONNX ops with the same tracer as the SCN.

Notebook 02 uses it to show the whole idea on a graph onnxruntime can run:

    x [1, 3, 8, 8] -> conv0 -> relu0 -> conv1 -> add0(., relu0) -> relu1
      -> permute (NHWC) -> contiguous -> view [64, 8] -> head (Linear) -> reshape [1, 8, 8, 4]

The handlers have the shape of helpers.trace.handlers (`handler(tracer, output, self, *args)`) and the
trace runs in helpers.trace.registry's `tracing(...)`; only the ops differ: Conv, Gemm, Add, Relu,
Transpose and Reshape exactly as ONNX defines them, in the default domain "" at opset 13.
"""
from typing import Callable, Optional

import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from helpers.errors import WorkbookError
from helpers.files import save_atomic
from helpers.trace.ops import contiguous, permute_dims, relu
from helpers.trace.registry import Registry, tracing
from helpers.trace.tracer import Tracer, check_supported

OPSET = 13  # default-domain opset of the toy graph
TOY_REGISTRY = Registry()


class ToyAdd(nn.Module):
    """`branch + identity` as a module: a bare `+` has no forward a registry could patch."""

    def forward(self, branch: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        return branch + identity


class ToyNet(nn.Module):
    """A residual conv block, a channels-last permute and a linear head: [N, C, H, W] -> [N, H, W, classes].

    Module names match the node names the trace gives them (conv0, relu0, conv1, add0, relu1).
    """

    def __init__(self, in_channels: int = 3, channels: int = 8, classes: int = 4, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():  # the same weights for the same seed; the global RNG is left alone
            torch.manual_seed(seed)
            self.conv0 = nn.Conv2d(in_channels, channels, 3, padding=1)
            self.relu0 = nn.ReLU()
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
            self.add0 = ToyAdd()
            self.relu1 = nn.ReLU()
            self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        x = self.relu0(self.conv0(x))  # [N, C, H, W]
        x = self.relu1(self.add0(self.conv1(x), x))  # residual: conv1(x) + x
        x = x.permute(0, 2, 3, 1).contiguous()  # [N, H, W, C]
        x = self.head(x.view(-1, x.shape[-1]))  # [N*H*W, C] -> [N*H*W, classes]
        return x.reshape(n, h, w, -1)  # [N, H, W, classes]


def make_toy_input(seed: int = 0, size: int = 8) -> torch.Tensor:
    """A fixed random image batch [1, 3, size, size]."""
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


@TOY_REGISTRY.register(nn.Conv2d, "forward")
def conv(tracer: Tracer, y: torch.Tensor, module: nn.Conv2d, x: torch.Tensor):
    path = tracer.module_name(module)
    if isinstance(module.padding, str) or module.padding_mode != "zeros":
        raise WorkbookError(f"{path}: padding={module.padding!r}, padding_mode={module.padding_mode!r}; the toy "
                            "exporter handles numeric zero padding only: use padding=1 (or another number)")
    index = tracer.next_index("Conv")
    inputs = [tracer.tensor_id(x, path), tracer.add_initializer(f"conv{index}.weight", module.weight)]  # [O, I, kH, kW]
    if module.bias is not None:
        inputs.append(tracer.add_initializer(f"conv{index}.bias", module.bias))  # [O]
    attributes = dict(kernel_shape=list(module.kernel_size), strides=list(module.stride),
                      pads=list(module.padding) * 2,  # ONNX: all begins, then all ends
                      dilations=list(module.dilation), group=module.groups)
    tracer.add_node("Conv", inputs, y, attributes, index=index, module=path)


@TOY_REGISTRY.register(nn.Linear, "forward")
def gemm(tracer: Tracer, y: torch.Tensor, module: nn.Linear, x: torch.Tensor):
    path = tracer.module_name(module)
    if x.dim() != 2:
        raise WorkbookError(f"{path}: Gemm needs a 2-D input [N, C], got {list(x.shape)}; reshape it first "
                            "(x.view(-1, x.shape[-1]))")
    index = tracer.next_index("Gemm")
    inputs = [tracer.tensor_id(x, path), tracer.add_initializer(f"gemm{index}.weight", module.weight)]  # [O, I]
    if module.bias is not None:
        inputs.append(tracer.add_initializer(f"gemm{index}.bias", module.bias))  # [O]
    tracer.add_node("Gemm", inputs, y, dict(transB=1), index=index, module=path)  # y = x @ W.T + b


@TOY_REGISTRY.register(ToyAdd, "forward")
def add(tracer: Tracer, y: torch.Tensor, module: ToyAdd, branch: torch.Tensor, identity: torch.Tensor):
    path = tracer.module_name(module)
    tracer.add_node("Add", [tracer.tensor_id(branch, path), tracer.tensor_id(identity, path)], y, {}, module=path)


TOY_REGISTRY.register(nn.ReLU, "forward")(relu)  # the same Relu as the SCN's (helpers.trace.ops)


@TOY_REGISTRY.register(torch.Tensor, "permute")
def transpose(tracer: Tracer, y: torch.Tensor, x: torch.Tensor, *dims):
    if tracer.knows(x):  # a permute of a tensor outside the network is not part of the graph
        tracer.add_node("Transpose", [tracer.tensor_id(x)], y, dict(perm=permute_dims(dims, x.dim())))


@TOY_REGISTRY.register(torch.Tensor, "reshape")
@TOY_REGISTRY.register(torch.Tensor, "view")
def reshape(tracer: Tracer, y: torch.Tensor, x: torch.Tensor, *shape):
    if tracer.knows(x):
        index = tracer.next_index("Reshape")
        target = torch.tensor(list(y.shape), dtype=torch.int64)  # -1 resolved: the graph has a fixed shape
        inputs = [tracer.tensor_id(x), tracer.add_initializer(f"reshape{index}.shape", target)]
        tracer.add_node("Reshape", inputs, y, {}, index=index)


TOY_REGISTRY.register(torch.Tensor, "contiguous")(contiguous)  # a copy, no node (helpers.trace.ops)


def trace_toy(model: nn.Module, x: torch.Tensor, registry: Registry = TOY_REGISTRY,
              on_node: Optional[Callable] = None):
    """Run `model(x)` once inside `tracing`; returns (tracer, output). The input is tensor "0"."""
    check_supported(model, registry)
    tracer = Tracer(model, on_node=on_node)
    with torch.no_grad(), tracing(tracer, registry):
        tracer.new_tensor(x)
        output = model(x)
    return tracer, output


def make_initializer(name: str, tensor: torch.Tensor) -> TensorProto:
    """A TensorProto holding the tensor's bytes (fp32 weights, int64 shapes) as raw_data."""
    array = tensor.detach().cpu().contiguous().numpy()
    dtype = helper.np_dtype_to_tensor_dtype(array.dtype)  # float32 -> FLOAT, int64 -> INT64
    return helper.make_tensor(name, dtype, list(array.shape), array.tobytes(), raw=True)


def make_toy_model(tracer: Tracer, x: torch.Tensor, output: torch.Tensor) -> onnx.ModelProto:
    """The ModelProto of a toy trace: input "0" fp32 with x's shape, one fp32 output."""
    nodes = [helper.make_node(n.op, n.inputs, n.outputs, name=n.name, **n.attributes) for n in tracer.nodes]
    initializers = [make_initializer(name, t) for name, t in tracer.initializers.items()]
    graph_input = helper.make_tensor_value_info("0", TensorProto.FLOAT, list(x.shape))
    graph_output = helper.make_tensor_value_info(tracer.tensor_id(output, "the graph output"), TensorProto.FLOAT,
                                                 list(output.shape))
    graph = helper.make_graph(nodes, "toy", [graph_input], [graph_output], initializers)
    # "" is ONNX's default domain; "ai.onnx" is another name for the same domain. Write "": onnx's checker
    # accepts "ai.onnx" in an opset import but not as a node's domain.
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", OPSET)],
                              producer_name="scn-export-workbook")
    model.ir_version = 8  # readable by onnx >= 1.10 and onnxruntime >= 1.10
    return model


def export_toy(model: nn.Module, x: torch.Tensor, path=None, registry: Registry = TOY_REGISTRY) -> onnx.ModelProto:
    """Trace `model(x)`, build the standard-ONNX graph and, when `path` is given, save it atomically."""
    if x.dtype != torch.float32:
        raise WorkbookError(f"export_toy expects a float32 input, got {x.dtype}; pass x.float()")
    tracer, output = trace_toy(model.eval(), x, registry)
    proto = make_toy_model(tracer, x, output)
    if path is not None:
        save_atomic(proto, path)
    return proto
