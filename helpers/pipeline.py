"""The export as an API: prepare a quantized SCN, trace it, build and save its graph.

    model = prepare_scn(build_scn(cfg), batches)                  # quantized, BN folded, ReLU fused, calibrated
    result = export_scn(model, voxels, coords, "build/scn.onnx")  # ExportResult: model, tracer, output, path

Steps: quantize, fold BN, fuse ReLU -> calibrate (int8) -> disable the quantizers and trace the float
network (fp16 on a GPU) -> build the graph -> save it atomically.
"""
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import onnx
import torch

from helpers.checkpoint import check_weights
from helpers.errors import WorkbookError
from helpers.files import save_atomic
from helpers.layout import check_input_fits, network_layout
from helpers.model import place
from helpers.quant.calibrate import calibrate, use_amax
from helpers.quant.fuse import fuse
from helpers.quant.modules import TensorQuantizer, quantize_scn  # helpers.quant imports the library lean
from helpers.quant.precision import quantizers_disabled, set_precision
from helpers.quant.ranges import dynamic_ranges
from helpers.support import check_support
from helpers.trace.handlers import REGISTRY
from helpers.trace.onnx_build import make_scn_model
from helpers.trace.registry import Registry, tracing
from helpers.trace.tracer import Tracer, check_supported


@dataclass
class ExportResult:
    model: onnx.ModelProto  # the graph
    tracer: Tracer  # nodes, obj_to_tensor_id, initializers of the trace
    output: torch.Tensor  # the traced PyTorch network's output, [1, 256, 180, 180]
    path: Optional[Path] = None  # where it was saved


def round_to_fp16(model: torch.nn.Module):
    """Round weights to the fp16 values the graph stores, so PyTorch runs exactly what is saved."""
    for p in model.parameters():
        p.data = p.data.half().to(p.dtype)


def prepare_scn(model, batches, int8: bool = True, progress: bool = True, layout: Optional[str] = None):
    """A quantized, BN-folded, ReLU-fused copy of `model` whose layers are int8 (calibrated on `batches`)
    or, with int8=False, fp16; the export reads that choice from the layers. A model loaded from a
    checkpoint with calibrated ranges (model.checkpoint_amax, see helpers.checkpoint) keeps those.

    `layout` ('xyz' / 'zyx') is needed only for a network that does not show its own (helpers.layout);
    one that contradicts the network, or coords outside its spatial shape, are refused before any work."""
    voxels, coords = batches[0] if batches else (None, None)
    if voxels is None:
        raise WorkbookError("prepare_scn needs at least one (voxels, coords) batch")
    layout = network_layout(model, layout)
    for _, batch_coords in batches:
        check_input_fits(model, batch_coords, layout)
    check_support(model, voxels, coords).raise_first()  # what the file cannot carry, one line, before any work
    check_weights(model.state_dict())  # NaN weights would break calibration deep inside torch
    model = place(copy.deepcopy(model), voxels.device)  # a copy (re-running gives the same result), on the
    # voxels' device with spconv's algorithm for it: an unplaced model on a CPU would ask for CUDA
    quantize_scn(model)  # quantized convs and adds
    fuse(model, voxels, coords)  # BN folded, ReLU fused
    set_precision(model, int8=int8)
    round_to_fp16(model)
    amax = getattr(model, "checkpoint_amax", None)  # ranges calibrated elsewhere, read by load_checkpoint
    if int8 and amax:
        use_amax(model, amax)  # as they are: no re-calibration
    elif int8:
        calibrate(model, batches, progress=progress)  # ends by naming any layer without amax
    return model


def trace_scn(model, voxels, coords, on_node: Optional[Callable] = None, ranges: Optional[dict] = None,
              layout: Optional[str] = None, registry: Registry = REGISTRY):
    """Run the float network once inside `tracing`; every recorded op becomes a node.

    Each layer's precision is read from the layer (set_precision); `ranges` is dynamic_ranges(model),
    read here when not given; the ScatterDense format is the network's layout (helpers.layout).
    `registry` holds the handlers: the workbook's own, or a copy with a handler of yours added.
    """
    layout = network_layout(model, layout)
    check_input_fits(model, coords, layout)
    names = check_supported(model, registry, allowed=(TensorQuantizer,))  # module paths, for the log
    if ranges is None:
        ranges = dynamic_ranges(model)  # the int8 layers' amax, read before tracing, in one copy
    tracer = Tracer(on_node=on_node, dynamic_ranges=ranges, layout=layout, module_names=names)
    with quantizers_disabled(model), torch.no_grad(), tracing(tracer, registry):
        tracer.new_tensor(voxels)  # the graph input is tensor "0"
        output = model(voxels, coords)
    return tracer, output


def export_scn(model, voxels, coords, path=None, on_node: Optional[Callable] = None,
               dtype: Optional[torch.dtype] = None, layout: Optional[str] = None, registry: Registry = REGISTRY):
    """Trace a prepared SCN (see prepare_scn) and build, and optionally save, its graph.

    What is int8 and what fp16 is the layers' own precision (prepare_scn / set_precision): the int8
    layers get their dynamic ranges, the fp16 ones none. `layout` as in prepare_scn; `registry` as in trace_scn.
    """
    layout = network_layout(model, layout)  # before any work: a contradicting layout is refused here
    check_input_fits(model, coords, layout)
    if dtype is None:
        dtype = torch.float16 if voxels.is_cuda else torch.float32  # spconv on a GPU likes fp16
    ranges = dynamic_ranges(model)  # read while amax is fp32, before .half()
    model = place(model, voxels.device, dtype)  # in place: the quantizers' amax buffers turn fp16 too
    x = voxels.half().to(dtype)  # the graph input is FLOAT16: trace on exactly the values the engine gets
    tracer, output = trace_scn(model, x, coords, on_node, ranges, layout, registry)
    proto = make_scn_model(tracer, voxels.shape[1], list(output.shape))
    return ExportResult(proto, tracer, output, save_atomic(proto, path) if path else None)
