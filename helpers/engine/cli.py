"""Run an exported SCN file in NVIDIA's sparse-convolution engine (libspconv) and compare it with PyTorch.

    python -m helpers.engine build/scn.onnx --tensors build/tensors --libspconv ~/Lidar_AI_Solution
    python -m helpers.engine --build-only --out-dir build/runner --libspconv PATH    # a runner to carry

Steps: check every path (the file, the tensors, libspconv: not a git-lfs pointer) -> the build tools
(g++, protoc, libprotobuf, libcudart.so.12) -> the GPU (nvidia-smi) and whether libspconv has code for
it -> build the runner once (build/engine/) -> run it as a child process in each precision -> print the
cosine and max abs against the float and fake-quant PyTorch outputs, ms per forward and each layer's
precision as the engine reports it.
"""
import argparse
import datetime
import json
import os
import sys
import traceback

from helpers import files
from helpers.engine.build import build_portable, build_runner, find_toolchain
from helpers.engine.library import find_library
from helpers.errors import WorkbookError


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are WorkbookErrors: one line, exit 2."""

    def error(self, message):
        raise WorkbookError(f"{message}; see python -m helpers.engine --help")


def parse_args(argv):
    p = Parser(prog="python -m helpers.engine", description=__doc__.split("\n\n")[0],
               epilog="Exit codes: 0 every build meets its target; 1 a build misses its target (fp16: cosine "
                      ">= 0.99999 vs float PyTorch; int8: >= 0.9999 vs fake-quant); 2 bad input or environment "
                      "(one line says what and how to fix it); 3 an internal error.")
    p.add_argument("file", nargs="?", help="the .onnx file written by python -m helpers.export")
    p.add_argument("--tensors", metavar="DIR", help="the folder written by python -m helpers.export --save-tensors")
    p.add_argument("--libspconv", metavar="PATH", default=os.environ.get("SCN_LIBSPCONV"),
                   help="libspconv.so, its 3DSparseConvolution folder or a Lidar_AI_Solution checkout "
                        "(default: $SCN_LIBSPCONV)")
    p.add_argument("--precision", default="both", choices=("int8", "fp16", "both"), help="engine build precision")
    p.add_argument("--repeat", type=int, default=50, metavar="N", help="timed forwards after warm-up (default 50)")
    p.add_argument("--save-json", metavar="PATH", help="write the machine, date and figures as JSON")
    p.add_argument("--label", default="", help="a name for the scan in the JSON, e.g. 'default scene'")
    p.add_argument("--runner", metavar="PATH", help="a runner built before (--build-only --out-dir) instead of "
                   "building one")
    p.add_argument("--build-only", action="store_true", help="build the runner and stop (no GPU needed)")
    p.add_argument("--out-dir", metavar="DIR", help="with --build-only: a runner + libcudart.so.12 to carry to "
                   "another machine")
    return p.parse_args(argv)


def check_args(args):
    """Every option and path, before any work: a bad one is a WorkbookError."""
    if not args.libspconv:
        raise WorkbookError("--libspconv: not given and $SCN_LIBSPCONV is not set; expected libspconv.so, its "
                            "3DSparseConvolution folder or a Lidar_AI_Solution checkout")
    if args.out_dir and not args.build_only:
        raise WorkbookError(f"--out-dir {args.out_dir}: applies with --build-only only; add --build-only")
    if args.build_only:
        if args.out_dir:
            files.check_output_folder(args.out_dir, "--out-dir", {})
        return
    if not args.file or not args.tensors:
        raise WorkbookError("expected FILE and --tensors DIR, e.g. python -m helpers.engine build/scn.onnx "
                            "--tensors build/tensors --libspconv PATH")
    if not 1 <= args.repeat <= 10000:
        raise WorkbookError(f"--repeat {args.repeat}: expected 1..10000 timed forwards; e.g. --repeat 50")
    files.check_input(args.file, "FILE")
    if args.save_json:
        files.check_output_file(args.save_json, "--save-json", {"FILE": args.file})


def run(args) -> int:
    check_args(args)
    library = find_library(args.libspconv)
    if args.build_only:
        tools = find_toolchain()
        built = build_portable(library, tools, args.out_dir) if args.out_dir else build_runner(library, tools)
        print(f"built {built} against {library.so_file}")
        return 0
    from helpers.check.agree import load_reference  # torch: imported only once there is a file to run
    from helpers.engine.run import run_engine, set_up
    from helpers.onnx_file import load_onnx
    load_onnx(args.file)  # an ONNX file at all, before the engine sees it
    reference = load_reference(args.tensors)
    setup = set_up(args.libspconv, args.runner)
    gpu = setup.gpu
    print(f"NVIDIA libspconv {library.so_file} ({setup.archs}) on {gpu.name} (compute capability "
          f"{gpu.compute_capability}): {args.file}, {len(reference.voxels):,} voxels")
    precisions = ["int8", "fp16"] if args.precision == "both" else [args.precision]
    runs = [run_engine(setup.runner, setup.library, args.file, reference, p, repeat=args.repeat) for p in precisions]
    for result in runs:
        print(result.line())
        print("  " + ", ".join(f"{name}:{precision}" for name, precision in result.layers))
    if len(runs) == 2:
        print(f"int8 / fp16 time: {runs[0].ms / runs[1].ms:.2f}")
    if args.save_json:
        saved = {"label": args.label, "file": str(args.file), "voxels": len(reference.voxels),
                 "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "machine": {"gpu": gpu.name, "driver": gpu.driver, "compute_capability": gpu.compute_capability},
                 "libspconv": str(library.so_file), "libspconv_archs": str(setup.archs),
                 "runs": [result.to_dict() for result in runs]}
        files.write_atomic(args.save_json, json.dumps(saved, indent=1) + "\n")
        print(f"wrote {args.save_json}")
    return 0 if all(result.meets_target() for result in runs) else 1


def main(argv=None) -> int:
    """The command line as a function: 0 (targets met), 1 (a target missed), 2 (bad input), 3 (a bug)."""
    try:
        return run(parse_args(sys.argv[1:] if argv is None else argv))
    except SystemExit as stop:  # --help
        return int(stop.code or 0)
    except WorkbookError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print("error: internal error (a bug in the workbook); please report the traceback above", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
