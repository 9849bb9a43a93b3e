"""Export a lidar SCN (BEVFusion's or CenterPoint's) to the ONNX graph NVIDIA's sparse-conv engine reads:
the command line.

    python -m helpers.export --out build/scn.onnx          # the built-in synthetic scene
    python -m helpers.export --points scan.bin --checkpoint bevfusion.pth --layout zyx
    python -m helpers.export --network centerpoint --checkpoint epoch_20.pth --out build/centerpoint.onnx
    python -m helpers.export --network voxelbackbone8x --check-only      # what can be exported, and why not

Steps: check every option and path (a bad one: one line, exit 2, nothing written) -> build (and load)
the SCN -> prepare and export it (helpers.pipeline) -> write the graph (and the tensors) atomically ->
check the file as python -m helpers.verify does: the contract, and re-runs from the file alone, in float
and in int8.
"""
import argparse
import os
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List

import torch
from absl import logging as absl_logging

from helpers import files
from helpers.check.agree import FILES as TENSOR_FILES, check_file, tensor_files
from helpers.check.tensor_folder import MANIFEST
from helpers.check.contract import OP_COUNTS
from helpers.checkpoint import load_checkpoint
from helpers.config import NETWORKS, PRESETS, SCNConfig, get_config
from helpers.data.points import read_points
from helpers.data.scene import SCENES, make_scene
from helpers.data.voxelize import voxelize
from helpers.errors import WorkbookError, held_warnings, print_warnings
from helpers.model import build_scn, pick_device, place
from helpers.pipeline import ExportResult, export_scn, prepare_scn
from helpers.quant.reference import reference_run
from helpers.support import check_support


def load_batches(args, cfg: SCNConfig, device) -> List:
    """(voxels, coords) on the device for the export input (first) and the calibration scans."""
    if args.points:
        sources = [args.points] + args.calib_points[:args.calibrate]
    elif args.calib_points:
        sources = [f"scene:{args.scene}:0"] + args.calib_points[:args.calibrate]
    else:  # synthetic scenes, one per seed
        sources = [f"scene:{args.scene}:{seed}" for seed in range(args.calibrate)]
    def points_of(source):
        if source.startswith("scene:"):
            _, name, seed = source.split(":")
            return make_scene(name, seed=int(seed))
        return read_points(source, columns=args.columns)

    batches = []
    # the scans are read (or ray-cast) in worker threads, numpy and file reads leave the interpreter lock, while
    # this thread voxelizes the ones that are ready (on a GPU its first use, CUDA's start-up, overlaps them too);
    # each scene has its own seed, so the scans are the same in any order
    with ThreadPoolExecutor(max_workers=min(4, len(sources), os.cpu_count() or 1)) as pool:
        scans = zip(sources, pool.map(points_of, sources))  # in order; a reading error is raised here
        if not args.quiet and len(sources) >= 4:  # many scans take a while: show progress (a terminal bar)
            from tqdm import tqdm
            scans = tqdm(scans, total=len(sources), desc="reading scans")
        for source, points in scans:
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


MAX_CALIBRATE = 64  # calibration scans; each is read, voxelized and kept in memory, and amax settles long before


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are WorkbookErrors: one line, exit 2, like every other bad input."""

    def error(self, message):
        raise WorkbookError(f"{message}; see python -m helpers.export --help")


def parse_args(argv):
    p = Parser(prog="python -m helpers.export", description=__doc__.split("\n\n")[0],
               epilog="Exit codes: 0 written and checked; 1 written but a check failed; 2 bad input, nothing "
                      "written (one line on stderr says what and how to fix it); 3 an internal error.")
    p.add_argument("--points", help="lidar scan (.bin float32 rows, or .npy); default: the built-in synthetic scene")
    p.add_argument("--columns", type=int, choices=(4, 5), help="values per point in a .bin: 5 nuScenes (default), "
                   "4 KITTI")
    p.add_argument("--scene", default="default", choices=sorted(SCENES), help="synthetic scene size")
    p.add_argument("--network", default="bevfusion", choices=sorted(NETWORKS), help="which SCN (default bevfusion)")
    p.add_argument("--checkpoint", help="BEVFusion / mmdet3d / CenterPoint / OpenPCDet checkpoint (.pth): a state dict, or a "
                   "pickled whole model (read without running it; its calibrated _amax ranges are used as they "
                   "are); default: random weights")
    p.add_argument("--grid", choices=sorted(PRESETS), help="voxel grid preset (default: the network's own)")
    p.add_argument("--precision", default="int8", choices=("int8", "fp16"), help="layer precision in the graph")
    p.add_argument("--dtype", choices=("fp32", "fp16"), help="what the trace computes in: default fp16 on CUDA, "
                   "fp32 on the CPU (spconv runs both on either)")
    p.add_argument("--layout", choices=("xyz", "zyx"), help="voxel coordinate order (default: the network's own)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run")
    p.add_argument("--calibrate", type=int, default=4, metavar="N",
                   help=f"scans for int8 calibration, 1..{MAX_CALIBRATE} (default 4)")
    p.add_argument("--calib-points", nargs="*", default=[], metavar="FILE", help="scans to calibrate on")
    p.add_argument("--save-tensors", metavar="DIR", help="write voxels.npy, coors.npy, output.npy, output_int8.npy "
                   "(fake-quant) and node_stats.npz, for python -m helpers.verify FILE --tensors DIR")
    p.add_argument("--out", default="build/scn.onnx", help="the ONNX file to write (default build/scn.onnx)")
    p.add_argument("--quiet", action="store_true", help="do not print the node-by-node log")
    p.add_argument("--check-only", action="store_true", help="print which modules can be exported, fused or not "
                   "(helpers.support) and stop; nothing is written")
    args = p.parse_args(argv)
    args.grid = args.grid or NETWORKS[args.network]
    if PRESETS[args.grid].network != args.network:
        p.error(f"--grid {args.grid} is a {PRESETS[args.grid].network} grid; with --network {args.network} use "
                f"{[name for name, cfg in PRESETS.items() if cfg.network == args.network]}")
    return args


def check_args(args):
    """Every option and path, before any work: a bad one is a WorkbookError, and nothing is written."""
    if not 1 <= args.calibrate <= MAX_CALIBRATE:
        raise WorkbookError(f"--calibrate {args.calibrate}: expected 1..{MAX_CALIBRATE} scans; amax settles after a "
                            "few scans; use e.g. --calibrate 8")
    if not str(args.out).endswith(".onnx"):
        raise WorkbookError(f"--out {args.out}: expected a file name ending in .onnx; e.g. --out build/scn.onnx")
    scans = [args.points] + args.calib_points if args.points else args.calib_points
    if args.columns and not any(str(s).endswith(".bin") for s in scans):
        raise WorkbookError(f"--columns {args.columns}: applies to .bin scans only and none was given; drop it, or "
                            "pass the .bin with --points")
    inputs = {"--points": args.points, "--checkpoint": args.checkpoint, "--calib-points": args.calib_points}
    for option, value in inputs.items():
        for path in files.as_paths(value):
            files.check_input(path, option)
    files.check_output_file(args.out, "--out", inputs)
    if args.save_tensors:
        if files.same_file(Path(args.save_tensors), Path(args.out)):
            raise WorkbookError(f"--save-tensors {args.save_tensors}: is the --out file; expected a folder of its "
                                "own; e.g. --save-tensors build/tensors")
        files.check_output_folder(args.save_tensors, "--save-tensors", inputs)
        check_tensors_folder(Path(args.save_tensors))


def check_tensors_folder(folder: Path):
    """The --save-tensors folder is replaced whole: it may hold only what an export writes there."""
    if not folder.is_dir():
        return
    ours = set(TENSOR_FILES) | {"node_stats.npz", MANIFEST}
    for entry in sorted(folder.iterdir()):
        if entry.name not in ours or entry.is_symlink() or not entry.is_file():
            kind = "folder" if entry.is_dir() else "file"
            raise WorkbookError(f"--save-tensors {folder}: holds the {kind} {entry.name!r}, which export does not "
                                "write and would not keep (the folder is replaced whole); choose an empty folder or "
                                "one written by --save-tensors")


def run(args) -> int:
    check_args(args)
    device = pick_device(args.device)
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    cfg = get_config(args.grid, args.layout)
    t0 = time.perf_counter()
    model = build_scn(cfg)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    place(model, device)
    if args.check_only:  # the support report on the first scan, and nothing written
        voxels, coords = load_batches(argparse.Namespace(**{**vars(args), "calibrate": 1, "calib_points": []}),
                                      cfg, device)[0]
        report = check_support(model, voxels, coords)
        print(report)
        report.raise_first()
        return 0
    batches = load_batches(args, cfg, device)
    voxels, coords = batches[0]
    print(f"SCN {cfg.name} ({cfg.layout}) on {device} in {str(dtype).replace('torch.', '')}: "
          f"{voxels.shape[0]} voxels, grid {cfg.sparse_shape}")
    try:
        prepared = prepare_scn(model, batches, int8=args.precision == "int8", progress=not args.quiet)
    except WorkbookError as err:  # say which scans the layers were calibrated on
        used = [args.points or f"scene {args.scene}"] + args.calib_points[:args.calibrate]
        scans = ", ".join(map(str, used))
        raise WorkbookError(f"{err} (calibration scans: {scans}: do they hold real points?)") from None
    # float and fake-quant PyTorch, node by node, in fp32 with the fp32 amax the file's ranges hold: run
    # before export_scn turns the model (amax buffers included) to fp16 for the trace
    reference = reference_run(prepared, voxels, coords)
    result = export_scn(prepared, voxels, coords, on_node=None if args.quiet else print_node, dtype=dtype)
    graph = result.model.SerializeToString(deterministic=True)
    folders = {args.save_tensors: tensor_files(reference, graph)} if args.save_tensors else {}
    files.write_set_atomic({args.out: graph}, folders)  # the graph and its tensors (their manifest names it): one unit
    print(f"wrote {args.out}: {summary(result)} in {time.perf_counter() - t0:.1f} s")
    verdict = check_file(args.out, reference, op_counts=OP_COUNTS[cfg.network], device=device)  # = helpers.verify
    print("\n".join(verdict.lines))
    return verdict.code


def main(argv=None) -> int:
    """The command line as a function: 0 (ok), 1 (written, a check failed), 2 (bad input), 3 (a bug)."""
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # pytorch-quantization warns on each quantizer switch
    with held_warnings() as held:  # a library's warning must not turn the one-line error into three lines
        try:
            args = parse_args(sys.argv[1:] if argv is None else argv)
            code = run(args)
        except SystemExit as stop:  # --help
            code = int(stop.code or 0)
        except WorkbookError as err:  # every bad input, caught here once
            print(f"error: {err}", file=sys.stderr)
            return 2  # the one line alone: what went wrong is said, a warning before it would only blur it
        except Exception:  # not the user's fault: keep the traceback, and do not look like a failed check
            traceback.print_exc()
            print("error: internal error (a bug in the workbook); please report the traceback above", file=sys.stderr)
            code = 3
        finally:
            absl_logging.set_verbosity(verbosity)
    print_warnings(held)
    return code


if __name__ == "__main__":
    sys.exit(main())
