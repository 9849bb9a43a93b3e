"""Export BEVFusion's lidar SCN to the ONNX graph NVIDIA's sparse-conv engine reads.

    python -m helpers.export --out build/scn.onnx          # the built-in synthetic scene
    python -m helpers.export --points scan.bin --checkpoint bevfusion.pth --layout zyx

Steps: build (and load) the SCN -> quantize, fold BN, fuse ReLU -> calibrate (int8) -> disable the
quantizers and trace the float network (fp16 on a GPU) -> build the graph -> save it atomically
-> check it against the contract and re-run it from the file alone.
"""
import argparse
import copy
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import onnx
import torch
from pytorch_quantization.nn import TensorQuantizer

from helpers import data, quantize
from helpers.checkpoint import load_checkpoint
from helpers.config import PRESETS, SCNConfig, get_config
from helpers.errors import WorkbookError
from helpers.handlers import REGISTRY
from helpers.model import build_scn, pick_device, place
from helpers.onnx_build import make_scn_model, save_atomic
from helpers.tracing import Tracer, check_supported, tracing
from helpers.verify import BEVFUSION_OPS, check_contract, compare, run_graph


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


def prepare_scn(model, batches, int8: bool = True, progress: bool = True):
    """A quantized, BN-folded, ReLU-fused copy of `model`, calibrated on `batches` when int8."""
    model = copy.deepcopy(model)  # the caller's model is left as it was: re-running gives the same result
    voxels, coords = batches[0] if batches else (None, None)
    if voxels is None:
        raise WorkbookError("prepare_scn needs at least one (voxels, coords) batch")
    quantize.prepare_scn(model, voxels, coords)  # quantized convs and adds, BN folded, ReLU fused
    quantize.set_precision(model, int8=int8)
    round_to_fp16(model)
    if int8:
        quantize.calibrate(model, batches, progress=progress)  # ends by naming any layer without amax
    return model


def layout_of(model) -> str:
    """'xyz' or 'zyx': a SparseEncoder knows its layout; other networks are taken as xyz."""
    return model.cfg.layout if hasattr(model, "cfg") else "xyz"


def trace_scn(model, voxels, coords, int8: bool = True, on_node: Optional[Callable] = None,
              ranges: Optional[dict] = None):
    """Run the float network once inside `tracing`; every recorded op becomes a node."""
    names = check_supported(model, REGISTRY, allowed=(TensorQuantizer,))  # module paths, for the log
    if ranges is None:
        ranges = quantize.dynamic_ranges(model) if int8 else {}  # read before tracing, in one copy
    tracer = Tracer(on_node=on_node, dynamic_ranges=ranges, layout=layout_of(model), module_names=names)
    with quantize.quantizers_disabled(model), torch.no_grad(), tracing(tracer, REGISTRY):
        tracer.new_tensor(voxels)  # the graph input is tensor "0"
        output = model(voxels, coords)
    return tracer, output


def export_scn(model, voxels, coords, path=None, int8: bool = True, on_node: Optional[Callable] = None,
               dtype: Optional[torch.dtype] = None):
    """Trace a prepared SCN (see prepare_scn) and build, and optionally save, its graph."""
    if dtype is None:
        dtype = torch.float16 if voxels.is_cuda else torch.float32  # spconv on a GPU likes fp16
    ranges = quantize.dynamic_ranges(model) if int8 else {}  # read while amax is fp32, before .half()
    model = place(model, voxels.device, dtype)  # in place: the quantizers' amax buffers turn fp16 too
    x = voxels.half().to(dtype)  # the graph input is FLOAT16: trace on exactly the values the engine gets
    tracer, output = trace_scn(model, x, coords, int8, on_node, ranges)
    proto = make_scn_model(tracer, voxels.shape[1], list(output.shape))
    return ExportResult(proto, tracer, output, save_atomic(proto, path) if path else None)


def load_batches(args, cfg: SCNConfig, device) -> List:
    """(voxels, coords) on the device for the export input (first) and the calibration scans."""
    if args.points:
        sources = [args.points] + args.calib_points[:args.calibrate]
    elif args.calib_points:
        sources = [f"scene:{args.scene}:0"] + args.calib_points[:args.calibrate]
    else:  # synthetic scenes, one per seed
        sources = [f"scene:{args.scene}:{seed}" for seed in range(args.calibrate)]
    batches = []
    for source in sources:
        if source.startswith("scene:"):
            _, name, seed = source.split(":")
            points = data.make_scene(name, seed=int(seed))
        else:
            points = data.read_points(source, columns=args.columns)
        try:
            batches.append(data.voxelize(torch.from_numpy(points).to(device), cfg))
        except WorkbookError as err:  # say which scan had no point in range
            raise WorkbookError(f"{source}: {err}") from None
    return batches


def print_node(node, output):
    print(f"  {node}")


def summary(result: ExportResult) -> str:
    counts = Counter(n.op for n in result.tracer.nodes)
    ops = ", ".join(f"{v} {k}" for k, v in counts.items())
    return (f"{len(result.tracer.nodes)} nodes ({ops}); tensors '0'..'{result.tracer.nodes[-1].outputs[0]}'; "
            f"output {list(result.output.shape)}")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m helpers.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--points", help="lidar scan (.bin float32 rows, or .npy); default: the built-in synthetic scene")
    p.add_argument("--columns", type=int, choices=(4, 5), help="values per point in a .bin: 5 nuScenes (default), "
                   "4 KITTI")
    p.add_argument("--scene", default="default", choices=sorted(data.SCENES), help="synthetic scene size")
    p.add_argument("--checkpoint", help="BEVFusion / mmdet3d checkpoint (.pth); default: random weights")
    p.add_argument("--grid", default="bevfusion-0075", choices=sorted(PRESETS), help="voxel grid preset")
    p.add_argument("--precision", default="int8", choices=("int8", "fp16"), help="layer precision in the graph")
    p.add_argument("--layout", default="xyz", choices=("xyz", "zyx"), help="voxel coordinate order")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run")
    p.add_argument("--calibrate", type=int, default=4, metavar="N", help="scans for int8 calibration (default 4)")
    p.add_argument("--calib-points", nargs="*", default=[], metavar="FILE", help="scans to calibrate on")
    p.add_argument("--save-tensors", metavar="DIR", help="write voxels.npy, coors.npy and output.npy (float32)")
    p.add_argument("--out", default="build/scn.onnx", help="the ONNX file to write (default build/scn.onnx)")
    p.add_argument("--quiet", action="store_true", help="do not print the node-by-node log")
    args = p.parse_args(argv)
    if args.calibrate < 1:
        p.error("--calibrate needs at least 1 scan")
    if not str(args.out).endswith(".onnx"):
        p.error(f"--out {args.out}: expected a file name ending in .onnx")
    return args


def run(args) -> int:
    device = pick_device(args.device)
    cfg = get_config(args.grid, args.layout)
    t0 = time.perf_counter()
    model = build_scn(cfg)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    place(model, device)
    batches = load_batches(args, cfg, device)
    voxels, coords = batches[0]
    print(f"SCN {cfg.name} ({cfg.layout}) on {device}: {voxels.shape[0]} voxels, grid {cfg.sparse_shape}")
    int8 = args.precision == "int8"
    prepared = prepare_scn(model, batches, int8=int8, progress=not args.quiet)
    result = export_scn(prepared, voxels, coords, Path(args.out), int8=int8,
                        on_node=None if args.quiet else print_node)
    print(f"wrote {args.out}: {summary(result)} in {time.perf_counter() - t0:.1f} s")
    problems = check_contract(result.model, op_counts=BEVFUSION_OPS)  # the 40-node BEVFusion graph
    print("contract check: " + ("passed" if not problems else f"{len(problems)} problems"))
    for problem in problems:
        print(f"  - {problem}")
    rerun = run_graph(args.out, voxels, coords, result.output.dtype)
    diff = compare(result.output, rerun)
    ok = diff["max_abs"] <= 1e-4 if result.output.dtype == torch.float32 else diff["cosine"] >= 0.9999
    print(f"graph re-run from the file: max abs error {diff['max_abs']:.3g}, cosine {diff['cosine']:.6f} "
          f"({'agrees' if ok else 'DISAGREES'} with PyTorch)")
    if args.save_tensors:
        out = Path(args.save_tensors)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "voxels.npy", voxels.half().cpu().numpy())  # [N, 5] fp16, the graph input
        np.save(out / "coors.npy", coords.int().cpu().numpy())  # [N, 4] int32
        np.save(out / "output.npy", result.output.float().cpu().numpy())  # [1, 256, 180, 180]
    return 0 if ok and not problems else 1


def main(argv=None) -> int:
    """The command line as a function: returns 0 (ok), 1 (a check failed) or 2 (bad input)."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as stop:  # --help, or argparse's own usage error (code 2)
        return int(stop.code or 0)
    try:
        return run(args)
    except WorkbookError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
