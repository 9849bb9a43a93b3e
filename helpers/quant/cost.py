"""What int8 costs: the fake-quantized network's output against the float network's, on one scan."""
import torch
from torch import nn

from helpers.check.compare import compare
from helpers.quant.precision import quantizers_disabled, set_quantizers
from helpers.quant.ranges import check_calibrated


def int8_cost(model: nn.Module, voxels: torch.Tensor, coords: torch.Tensor) -> dict:
    """How far the fake-int8 output is from the float output on one scan: {"cosine", "max_abs"}."""
    check_calibrated(model)
    with torch.no_grad(), quantizers_disabled(model):  # every quantizer's state is restored afterwards
        reference = model(voxels, coords)  # float
        set_quantizers(model, True)
        quantized = model(voxels, coords)  # fake int8
    return compare(quantized, reference)
