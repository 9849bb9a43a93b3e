"""Which layers compute in int8 and which in fp16, and switching the fake quantizers on and off.

    set_precision(model)          int8 everywhere, fp16 for the first input and the last output
    sync_quantizers(model)        the quantizers follow the precision: on for int8 layers, off for fp16 ones
    set_quantizers(model, on)     the int8 layers' quantizers on (fake int8), or every quantizer off (float)
    quantizers_disabled(model)    `with` block that runs float and restores each quantizer's state
"""
from contextlib import contextmanager

from torch import nn

from helpers.errors import WorkbookError
from helpers.quant.modules import QuantAdd, QuantSparseConv, named_quantizers, quantizers_of


def set_precision(model: nn.Module, int8=True, fp16_first_input=True, fp16_last_output=True) -> nn.Module:
    """int8 (or fp16) for every quantized layer; the first conv reads fp16 and the last conv writes fp16.

    Precision and quantizer state are one fact: a layer whose input is fp16 gets its quantizers switched
    off (sync_quantizers), so the fake-quant model computes what the file asks of the engine.
    """
    layers = [m for m in model.modules() if isinstance(m, (QuantSparseConv, QuantAdd))]
    convs = [m for m in layers if isinstance(m, QuantSparseConv)]
    if not convs:
        raise WorkbookError("the model has no QuantSparseConv; run helpers.quant.modules.quantize_scn(model) first")
    for layer in layers:
        layer.precision = layer.output_precision = "int8" if int8 else "fp16"
    if fp16_first_input:
        convs[0].precision = "fp16"
    if fp16_last_output:
        convs[-1].output_precision = "fp16"
    return sync_quantizers(model)


def sync_quantizers(model: nn.Module) -> nn.Module:
    """Quantizers on for every layer whose input precision is "int8", off for every fp16 one."""
    for module in model.modules():
        for _, quantizer in quantizers_of(module):
            if module.precision == "int8":
                quantizer.enable()
            else:
                quantizer.disable()
    return model


def set_quantizers(model: nn.Module, enabled: bool):
    """Switch the quantizers on (fake int8, for the int8 layers only: see sync_quantizers) or all off (float)."""
    if enabled:
        sync_quantizers(model)
        return
    for _, _, quantizer in named_quantizers(model):
        quantizer.disable()


@contextmanager
def quantizers_disabled(model: nn.Module):
    """`with quantizers_disabled(model):` runs float; each quantizer's state comes back on exit."""
    saved = [(q, q._disabled) for _, _, q in named_quantizers(model)]
    try:
        for quantizer, _ in saved:
            quantizer.disable()
        yield model
    finally:
        for quantizer, disabled in saved:
            quantizer._disabled = disabled
