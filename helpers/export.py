"""Export a lidar SCN (BEVFusion's or CenterPoint's) to the ONNX graph NVIDIA's sparse-conv engine reads:
the command line.

    python -m helpers.export --out build/scn.onnx          # the built-in synthetic scene
    python -m helpers.export --points scan.bin --checkpoint bevfusion.pth --layout zyx
    python -m helpers.export --network centerpoint --checkpoint epoch_20.pth --out build/centerpoint.onnx

Steps: build (and load) the SCN -> prepare and export it (helpers.pipeline) -> check the file as
python -m helpers.verify does: the contract, and re-runs from the file alone, in float and in int8.
"""
import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import List

import torch

from helpers.check.agree import check_file, save_reference
from helpers.check.contract import OP_COUNTS
from helpers.checkpoint import load_checkpoint
from helpers.config import NETWORKS, PRESETS, SCNConfig, get_config
from helpers.data.points import read_points
from helpers.data.scene import SCENES, make_scene
from helpers.data.voxelize import voxelize
from helpers.errors import WorkbookError
from helpers.model import build_scn, pick_device, place
from helpers.pipeline import ExportResult, export_scn, prepare_scn
from helpers.quant.reference import reference_run


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
            points = make_scene(name, seed=int(seed))
        else:
            points = read_points(source, columns=args.columns)
        try:
            batches.append(voxelize(torch.from_numpy(points).to(device), cfg))
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
    p.add_argument("--scene", default="default", choices=sorted(SCENES), help="synthetic scene size")
    p.add_argument("--network", default="bevfusion", choices=sorted(NETWORKS), help="which SCN (default bevfusion)")
    p.add_argument("--checkpoint", help="BEVFusion / mmdet3d / CenterPoint checkpoint (.pth); default: random weights")
    p.add_argument("--grid", choices=sorted(PRESETS), help="voxel grid preset (default: the network's own)")
    p.add_argument("--precision", default="int8", choices=("int8", "fp16"), help="layer precision in the graph")
    p.add_argument("--layout", choices=("xyz", "zyx"), help="voxel coordinate order (default: the network's own)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run")
    p.add_argument("--calibrate", type=int, default=4, metavar="N", help="scans for int8 calibration (default 4)")
    p.add_argument("--calib-points", nargs="*", default=[], metavar="FILE", help="scans to calibrate on")
    p.add_argument("--save-tensors", metavar="DIR", help="write voxels.npy, coors.npy, output.npy, output_int8.npy "
                   "(fake-quant) and node_stats.npz, for python -m helpers.verify FILE --tensors DIR")
    p.add_argument("--out", default="build/scn.onnx", help="the ONNX file to write (default build/scn.onnx)")
    p.add_argument("--quiet", action="store_true", help="do not print the node-by-node log")
    args = p.parse_args(argv)
    args.grid = args.grid or NETWORKS[args.network]
    if PRESETS[args.grid].network != args.network:
        p.error(f"--grid {args.grid} is a {PRESETS[args.grid].network} grid; with --network {args.network} use "
                f"{[name for name, cfg in PRESETS.items() if cfg.network == args.network]}")
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
    reference = reference_run(prepared, voxels, coords)  # float and fake-quant PyTorch, node by node
    if args.save_tensors:
        save_reference(args.save_tensors, reference)  # + output_int8.npy and node_stats.npz
    verdict = check_file(args.out, reference, op_counts=OP_COUNTS[cfg.network], device=device)  # = helpers.verify
    print("\n".join(verdict.lines))
    return verdict.code


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
