"""The quantized layers of the SCN: sparse convs and residual adds with fake int8 quantizers.

    quantize_scn(model)   SubMConv3d / SparseConv3d -> QuantSparseConv, ResidualAdd -> QuantAdd, in place
    named_quantizers      (layer path, "input" | "weight" | "add", quantizer) of every quantized layer

Everything runs in fp32 on CPU or CUDA; quantization is "fake" (quantize, then de-quantize).
"""
from typing import List, Tuple

import spconv.pytorch as spconv
import torch
from pytorch_quantization.nn import TensorQuantizer
from pytorch_quantization.tensor_quant import QuantDescriptor
from spconv.pytorch.conv import SparseConvolution
from torch import nn

from helpers.errors import WorkbookError
from helpers.model import ResidualAdd


# Symmetric int8, -127..127: the workbook's choice. NVIDIA's quantizers keep QuantDescriptor's default
# narrow_range=False, and TensorQuantizer then clamps to -128..127 (fake_tensor_quant's own default is True).
# Narrow range gives one symmetric grid to everything that quantizes here: the mse / entropy calibration works
# on histograms of |x| (calibrate.py), and the int8 re-run of the file (helpers/check/int8.py) reads one
# symmetric range per tensor, so it equals this fake-quant model exactly. Same scale (127 / amax); the two
# differ only for values below -127.5 / 127 * amax (code -128 there, -127 here).
INT8 = dict(num_bits=8, narrow_range=True)


class QuantSparseConv(SparseConvolution):
    """A sparse conv with a bias, an optional fused ReLU and int8 fake quantization of input and weight."""

    def __init__(self, ndim, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 subm=False, output_padding=0, transposed=False, inverse=False, indice_key=None, algo=None):
        super().__init__(ndim, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias=True, subm=subm, output_padding=output_padding, transposed=transposed,
                         inverse=inverse, indice_key=indice_key, algo=algo)
        self.input_quantizer = TensorQuantizer(QuantDescriptor(**INT8, calib_method="histogram"))  # per tensor
        self.weight_quantizer = TensorQuantizer(QuantDescriptor(**INT8, axis=(0,)))  # per C_out, max calib
        self.activation = "None"  # "ReLU" once fuse_relu has fused the following ReLU
        self.precision = "int8"  # of the input: "int8" or "fp16"
        self.output_precision = "int8"
        self.layer_name = ""  # module path, set by quantize_scn; names the layer in error messages

    @classmethod
    def from_float(cls, conv: SparseConvolution) -> "QuantSparseConv":
        """The same conv (arguments, weight, bias or zeros) as a QuantSparseConv on the same device."""
        quant = cls(conv.ndim, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.subm, conv.output_padding, conv.transposed, conv.inverse,
                    conv.indice_key, conv.algo)
        quant = quant.to(device=conv.weight.device, dtype=conv.weight.dtype).train(conv.training)
        with torch.no_grad():
            quant.weight.copy_(conv.weight)  # [C_out, k0, k1, k2, C_in]
            quant.bias.copy_(conv.bias if conv.bias is not None else torch.zeros_like(quant.bias))  # [C_out]
        return quant

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        features = self.input_quantizer(x.features)  # [N, C_in]
        weight = self.weight_quantizer(self.weight)  # [C_out, k0, k1, k2, C_in]
        # no bias and no activation for spconv: its fused path does not run on the CPU
        out = self._conv_forward(self.training, x.replace_feature(features), weight, None)
        features = out.features + self.bias  # [M, C_out]
        if self.activation == "ReLU":
            features = torch.relu(features)
        return out.replace_feature(features)


class QuantAdd(nn.Module):
    """`branch + identity` with one int8 quantizer shared by both inputs (the engine wants one scale)."""

    def __init__(self):
        super().__init__()
        self.quantizer = TensorQuantizer(QuantDescriptor(**INT8, calib_method="histogram"))  # per tensor
        self.precision = "int8"
        self.output_precision = "int8"
        self.layer_name = ""

    def forward(self, branch: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        return self.quantizer(branch) + self.quantizer(identity)  # [N, C] + [N, C]


def set_module(model: nn.Module, path: str, new: nn.Module):
    """Put `new` at `path` ("a.b.0") by setattr on its parent, so the module keeps its name."""
    parent_path, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_path), child, new)


def quantize_scn(model: nn.Module) -> nn.Module:
    """In place: every sparse conv becomes a QuantSparseConv and every ResidualAdd a QuantAdd."""
    for path, module in list(model.named_modules()):
        if isinstance(module, (QuantSparseConv, QuantAdd)):
            continue  # already quantized: running this twice changes nothing
        if path == "" and isinstance(module, (SparseConvolution, ResidualAdd)):
            raise WorkbookError("quantize_scn needs a network that contains the layer; "
                                "for a single conv use QuantSparseConv.from_float(conv)")
        if isinstance(module, SparseConvolution):
            new = QuantSparseConv.from_float(module)
        elif isinstance(module, ResidualAdd):
            new = QuantAdd().train(module.training)
        else:
            continue
        new.layer_name = path
        set_module(model, path, new)
    return model


def quantizers_of(module: nn.Module) -> List[Tuple[str, TensorQuantizer]]:
    """("input" | "weight" | "add", quantizer) of one quantized layer; [] for any other module."""
    if isinstance(module, QuantSparseConv):
        return [("input", module.input_quantizer), ("weight", module.weight_quantizer)]
    if isinstance(module, QuantAdd):
        return [("add", module.quantizer)]
    return []


def named_quantizers(model: nn.Module) -> List[Tuple[str, str, TensorQuantizer]]:
    """(layer path, "input" | "weight" | "add", quantizer) for every quantizer, in module order."""
    return [(path, kind, q) for path, m in model.named_modules() for kind, q in quantizers_of(m)]


