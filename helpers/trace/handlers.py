"""One handler per op: each writes the ONNX node that NVIDIA's sparse-conv engine reads.

Every handler has the same shape: `handler(tracer, output, self, *args)` runs after the original
method, looks up the names of its inputs, names its output and records one node.
The attribute names, types and values are those of docs/ONNX_CONTRACT.md.
"""
import spconv.pytorch as spconv
import torch
from torch import nn

from helpers.errors import WorkbookError
from helpers.model import ResidualAdd
from helpers.quant.modules import QuantAdd, QuantSparseConv
from helpers.support import conv_problem
from helpers.trace.ops import contiguous, permute_dims, relu
from helpers.trace.registry import Registry
from helpers.trace.tracer import Tracer

REGISTRY = Registry()


def conv_output_shape(conv, shape):
    """Spatial shape after a sparse conv, per axis, from kernel, stride, padding and dilation."""
    if conv.subm:
        return list(shape)  # submanifold convs keep the active sites and the grid
    out = []
    for n, k, s, p, d, op in zip(shape, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                                 conv.output_padding):
        if conv.transposed:
            out.append((n - 1) * s - 2 * p + d * (k - 1) + op + 1)
        else:
            out.append((n + 2 * p - d * (k - 1) - 1) // s + 1)
    return out


@REGISTRY.register(QuantSparseConv, "forward")
def sparse_convolution(tracer: Tracer, y: spconv.SparseConvTensor, conv: QuantSparseConv,
                       x: spconv.SparseConvTensor):
    index = tracer.next_index("SparseConvolution")
    path = tracer.module_name(conv)
    problem = conv_problem(conv)  # what the engine cannot carry: the same words as helpers.support's report
    if problem:
        raise WorkbookError(f"module '{path}' ({type(conv).__name__}) cannot be exported: {problem}")
    out_shape = conv_output_shape(conv, x.spatial_shape)
    if out_shape != list(y.spatial_shape):
        raise WorkbookError(f"module '{path}': spconv made the spatial shape {list(y.spatial_shape)}, the conv's "
                            f"kernel, stride, padding and dilation give {out_shape}; check the network's sparse_shape")
    inputs = [tracer.tensor_id(x.features, path),
              tracer.add_initializer(f"spconv{index}.weight", conv.weight),  # [Cout, k0, k1, k2, Cin]
              tracer.add_initializer(f"spconv{index}.bias", conv.bias)]  # [Cout], BatchNorm folded in
    attributes = dict(
        ndim=conv.ndim, input_spatial_shape=list(x.spatial_shape), output_spatial_shape=out_shape,
        in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=list(conv.kernel_size),
        stride=list(conv.stride), padding=list(conv.padding), dilation=list(conv.dilation),
        output_padding=list(conv.output_padding), subm=int(conv.subm), transposed=int(conv.transposed),
        inverse=int(conv.inverse), groups=conv.groups, output_bound=tracer.output_bound,
        rulebook=conv.indice_key or (f"subm_{path}" if conv.subm else ""),  # never empty for subm
        activation=conv.activation, input_shape=list(x.features.shape), output_shape=list(y.features.shape),
        precision=conv.precision, output_precision=conv.output_precision)
    attributes.update(tracer.dynamic_ranges.get(conv, {}))  # input and per-channel weight amax (int8)
    tracer.add_node("SparseConvolution", inputs, y.features, attributes, index=index, module=path,
                    spatial=(list(x.spatial_shape), out_shape), voxels=(x.features.shape[0], y.features.shape[0]))


@REGISTRY.register(QuantAdd, "forward")
@REGISTRY.register(ResidualAdd, "forward")
def add(tracer: Tracer, y: torch.Tensor, module: nn.Module, branch: torch.Tensor, identity: torch.Tensor):
    path = tracer.module_name(module)
    inputs = [tracer.tensor_id(branch, path), tracer.tensor_id(identity, path)]
    attributes = dict(precision=getattr(module, "precision", "fp16"),
                      output_precision=getattr(module, "output_precision", "fp16"))
    attributes.update(tracer.dynamic_ranges.get(module, {}))  # one amax for both inputs (int8)
    tracer.add_node("Add", inputs, y, attributes, module=path)


REGISTRY.register(nn.ReLU, "forward")(relu)  # the same Relu node as the toy exporter's (helpers.trace.ops)


@REGISTRY.register(spconv.SparseConvTensor, "dense")
def scatter_dense(tracer: Tracer, y: torch.Tensor, x: spconv.SparseConvTensor, channels_first: bool = True):
    attributes = dict(input_spatial_shape=list(x.spatial_shape), format=tracer.layout, output_shape=list(y.shape))
    tracer.add_node("ScatterDense", [tracer.tensor_id(x.features, "dense()")], y, attributes,
                    spatial=(list(x.spatial_shape), list(y.shape)))


@REGISTRY.register(torch.Tensor, "permute")
def transpose(tracer: Tracer, y: torch.Tensor, x: torch.Tensor, *dims):
    if tracer.knows(x):  # permutes of tensors outside the network are not part of the graph
        tracer.add_node("Transpose", [tracer.tensor_id(x)], y, dict(dims=permute_dims(dims, x.dim())))


@REGISTRY.register(torch.Tensor, "reshape")
@REGISTRY.register(torch.Tensor, "view")
def reshape(tracer: Tracer, y: torch.Tensor, x: torch.Tensor, *shape):
    if tracer.knows(x):
        tracer.add_node("Reshape", [tracer.tensor_id(x)], y, dict(dims=list(y.shape)))  # -1 resolved


REGISTRY.register(torch.Tensor, "contiguous")(contiguous)  # a copy: same name, no node (helpers.trace.ops)
