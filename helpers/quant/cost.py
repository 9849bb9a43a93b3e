"""What int8 costs: the fake-quantized network's output against the float network's, on one scan."""
import torch
from torch import nn

from helpers.check.compare import compare
from helpers.quant.modules import named_quantizers
from helpers.quant.precision import quantizers_disabled, set_quantizers
from helpers.quant.ranges import check_calibrated


def int8_cost(model: nn.Module, voxels: torch.Tensor, coords: torch.Tensor,
              quantize_fp16_layers: bool = False) -> dict:
    """How far the fake-int8 output is from the float output on one scan: {"cosine", "max_abs"}.

    quantize_fp16_layers=True also quantizes the layers the file keeps in fp16 (conv_input): what that
    would cost, and what this workbook measured before precision and quantizer state were one fact.
    """
    check_calibrated(model)
    with torch.no_grad(), quantizers_disabled(model):  # every quantizer's state is restored afterwards
        reference = model(voxels, coords)  # float
        set_quantizers(model, True)  # the int8 layers' quantizers
        if quantize_fp16_layers:
            for _, _, quantizer in named_quantizers(model):
                quantizer.enable()
        quantized = model(voxels, coords)  # fake int8
    return compare(quantized, reference)
