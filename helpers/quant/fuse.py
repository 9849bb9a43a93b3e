"""Model surgery before export: fold each BatchNorm into the conv before it, fuse each ReLU into that conv.

    fold_bn(model, voxels, coords)     conv -> BN becomes one conv with a bias; the BN becomes Identity
    fuse_relu(model, voxels, coords)   conv -> ReLU becomes one conv with activation="ReLU"
    fuse(model, voxels, coords)        both, in that order

The pairs are found by data flow, not by module order: one forward pass records which layer read
which tensor, so a BN or ReLU is fused only when it reads a conv's output and nothing else does.
"""
from collections import Counter
from typing import List, NamedTuple, Tuple

import spconv.pytorch as spconv
import torch
from pytorch_quantization.nn import TensorQuantizer
from spconv.pytorch.conv import SparseConvolution
from torch import nn

from helpers.errors import WorkbookError
from helpers.quant.modules import QuantAdd, QuantSparseConv, set_module


class Call(NamedTuple):
    """One module call seen while tracing: the module, its input feature tensors and its output features."""
    module: nn.Module
    inputs: Tuple[torch.Tensor, ...]  # kept alive, so their id()s stay unique until we are done
    output: torch.Tensor


def features_of(x):
    """The feature matrix [N, C] of a SparseConvTensor, or the tensor itself."""
    return x.features if isinstance(x, spconv.SparseConvTensor) else x


FLOW_VOXELS = 4096  # the data flow does not depend on the number of voxels: record it on a few


def trace_calls(model: nn.Module, voxels: torch.Tensor, coords: torch.Tensor) -> List[Call]:
    """Run model(voxels, coords) once and record every layer call (convs, BN, ReLU, adds, ...) in order.

    Which layer reads which tensor is the same for any input, so the pass runs on the first FLOW_VOXELS
    voxels only (a full scan would cost one more full forward for each of fold_bn and fuse_relu)."""
    voxels, coords = voxels[:FLOW_VOXELS], coords[:FLOW_VOXELS]
    if model.training:
        raise WorkbookError("folding and fusing need the model in eval mode; call model.eval() first")
    calls = []

    def record(module, inputs, output):
        if inputs:  # hooks see positional inputs only
            calls.append(Call(module, tuple(features_of(x) for x in inputs), features_of(output)))

    layers = [m for m in model.modules() if not isinstance(m, TensorQuantizer)
              and (isinstance(m, (SparseConvolution, QuantAdd)) or len(list(m.children())) == 0)]
    handles = [m.register_forward_hook(record) for m in layers]
    try:
        with torch.no_grad():
            model(voxels, coords)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def conv_followers(model, voxels, coords, kind) -> List[Tuple[QuantSparseConv, nn.Module]]:
    """(conv, module) pairs where a `kind` module (BatchNorm1d or ReLU) reads a QuantSparseConv's output."""
    calls = trace_calls(model, voxels, coords)
    made_by = {}  # id(tensor) -> the module that last wrote it (an in-place ReLU writes its own input)
    reads = Counter()  # (id(tensor), writer) -> how many layer calls read that value
    found = []  # (conv, module, value read)
    for c in calls:
        if isinstance(c.module, nn.Identity):
            continue  # a folded BN: passes its input on unchanged
        writer = made_by.get(id(c.inputs[0]))
        if isinstance(c.module, kind) and isinstance(writer, QuantSparseConv):
            found.append((writer, c.module, (id(c.inputs[0]), writer)))
        reads.update((id(x), made_by.get(id(x))) for x in c.inputs)
        made_by[id(c.output)] = c.module
    uses = Counter(c.module for c in calls)  # how often each module object was called
    for conv, module, value in found:
        what = f"the {kind.__name__} after {conv.layer_name}"
        if uses[module] > 1:
            raise WorkbookError(f"{what} is one module used {uses[module]} times; "
                                f"use a separate {kind.__name__} module for each use so it can be fused")
        if reads[value] > 1:
            raise WorkbookError(f"{what} cannot be fused: other layers also read that conv's output; "
                                f"let only the {kind.__name__} read it")
    return [(conv, module) for conv, module, _ in found]


def replace_everywhere(model: nn.Module, old: nn.Module, new: nn.Module):
    """Put `new` at every path where `old` sits."""
    paths = [path for path, m in model.named_modules(remove_duplicate=False) if m is old]
    for path in paths:
        set_module(model, path, new)


def fold_bn(model: nn.Module, voxels: torch.Tensor, coords: torch.Tensor) -> nn.Module:
    """Fold every BatchNorm1d that follows a QuantSparseConv into its weight and bias; the BN becomes Identity."""
    for conv, bn in conv_followers(model, voxels, coords, nn.BatchNorm1d):
        if bn.running_var is None:
            raise WorkbookError(f"the BatchNorm1d after {conv.layer_name} has no running statistics to fold")
        gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)  # [C_out]
        beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_var)  # [C_out]
        scale = gamma / torch.sqrt(bn.running_var + bn.eps)  # [C_out]
        with torch.no_grad():
            conv.weight.mul_(scale.view(-1, *[1] * (conv.weight.dim() - 1)))  # [C_out, k0, k1, k2, C_in]
            conv.bias.copy_((conv.bias - bn.running_mean) * scale + beta)  # [C_out]
        replace_everywhere(model, bn, nn.Identity())
    return model


def fuse_relu(model: nn.Module, voxels: torch.Tensor, coords: torch.Tensor) -> nn.Module:
    """Fuse every ReLU that reads a conv's output into that conv (activation="ReLU"). Run fold_bn first."""
    for conv, relu in conv_followers(model, voxels, coords, nn.ReLU):
        conv.activation = "ReLU"
        replace_everywhere(model, relu, nn.Identity())
    return model  # ReLUs after an add or anything else stay ReLU nodes


def fuse(model: nn.Module, voxels: torch.Tensor, coords: torch.Tensor) -> nn.Module:
    """fold_bn, then fuse_relu (a ReLU after a BN only follows the conv once the BN is gone)."""
    return fuse_relu(fold_bn(model, voxels, coords), voxels, coords)
