"""The PyTorch side of the int8 proof: the prepared model's float and fake-quant outputs, node by node.

    reference_run(model, voxels, coords) -> Reference

The model runs twice inside the same tracing machinery as the export (so every recorded node has the
file's node name): once with every quantizer off (float, what the trace records) and once with the
int8 layers' quantizers on (fake int8, what the engine's int8 build computes). For each node it keeps
a small fingerprint, helpers.check.int8.channel_stats; the verifier compares the file's re-runs with it.
"""
import torch
from pytorch_quantization.nn import TensorQuantizer

from helpers.check.agree import Reference
from helpers.check.int8 import node_stats_recorder
from helpers.quant.precision import quantizers_disabled, set_quantizers
from helpers.trace.handlers import REGISTRY
from helpers.trace.registry import tracing
from helpers.trace.tracer import Tracer, check_supported


def traced_stats(model, x, coords, int8: bool):
    """(output, {node name: channel stats}) of one traced run; quantizers per precision when int8."""
    stats = {}
    names = check_supported(model, REGISTRY, allowed=(TensorQuantizer,))
    tracer = Tracer(on_node=node_stats_recorder(stats), module_names=names)
    with quantizers_disabled(model), torch.no_grad():
        if int8:
            set_quantizers(model, True)  # the int8 layers' quantizers only (sync_quantizers)
        with tracing(tracer, REGISTRY):
            tracer.new_tensor(x)
            output = model(x, coords)
    return output, stats


def reference_run(model, voxels: torch.Tensor, coords: torch.Tensor) -> Reference:
    """Float and fake-quant outputs of a prepared (and, for int8, calibrated) model, with node stats.

    Runs in the model's own dtype on the voxels' device, on fp16-rounded voxels like the export.
    """
    dtype = next(model.parameters()).dtype
    x = voxels.half().to(dtype)  # the graph input is FLOAT16
    output, float_stats = traced_stats(model, x, coords, int8=False)
    output_int8, int8_stats = traced_stats(model, x, coords, int8=True)
    return Reference(voxels.half(), coords.int(), output, output_int8, {"float": float_stats, "int8": int8_stats},
                     str(dtype).replace("torch.", ""), voxels.device.type)
