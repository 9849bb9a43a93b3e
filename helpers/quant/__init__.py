"""Int8 quantization of the SCN with pytorch-quantization, as NVIDIA's reference does it.

    modules     QuantSparseConv, QuantAdd, quantize_scn: the layers with fake int8 quantizers
    fuse        fold_bn, fuse_relu: BatchNorm and ReLU merged into the conv before them
    precision   set_precision, quantizers on / off
    calibrate   amax of every quantizer from a few scans
    ranges      dynamic_ranges: the amax values the exporter writes into the graph
    cost        int8_cost: fake int8 against float on one scan
    qat         finetune: a few steps of quantization-aware fine-tuning toward the float output
    reference   reference_run: float and fake-quant outputs, node by node, for the checks of the file
"""
import sys
import types


def _import_library_without_scipy_stats():
    """Import pytorch-quantization without the scipy.stats it imports for one function.

    Its histogram module does `from scipy.stats import entropy` at import time; scipy.stats takes
    about a second to import (8 s on a busy 2-core machine), and the workbook computes its own
    entropy amax (helpers.quant.calibrate). While the library loads, a stand-in `scipy.stats` offers
    an `entropy` that imports the real one on first call; the stand-in is removed right after, so
    any later `import scipy.stats` gets the real module.
    """
    if "pytorch_quantization.calib" in sys.modules or "scipy.stats" in sys.modules:
        return
    stand_in = types.ModuleType("scipy.stats")

    def entropy(*args, **kwargs):
        from scipy.stats import entropy as real
        return real(*args, **kwargs)

    stand_in.entropy = entropy
    sys.modules["scipy.stats"] = stand_in
    try:
        import pytorch_quantization.nn  # noqa: F401
    finally:
        if sys.modules.get("scipy.stats") is stand_in:
            del sys.modules["scipy.stats"]


_import_library_without_scipy_stats()
