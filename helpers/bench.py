"""How much does tracing cost? Forward, traced forward and full export timed on the same input.

    python -m helpers.bench                       # default synthetic scene, auto device
    python -m helpers.bench --scene full --device cuda --precision fp16 --json

Every figure is the median of --repeat runs after --warmup runs; CUDA work is synchronised before
each clock reading. Ratios are taken within one run, so they compare like with like.
"""
import argparse
import cProfile
import io
import json
import pstats
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from helpers.config import get_config
from helpers.data.points import read_points
from helpers.data.scene import SCENES, make_scene
from helpers.data.voxelize import voxelize
from helpers.errors import WorkbookError
from helpers.model import build_scn, pick_device, place
from helpers.pipeline import export_scn, prepare_scn, trace_scn
from helpers.quant.calibrate import calibrate
from helpers.quant.precision import quantizers_disabled


def timed(steps: dict, device, repeat: int, warmup: int) -> dict:
    """Median seconds of each function in `steps`, run in turns (a, b, c, a, b, c, ...) so that
    drift of clocks or load hits every figure alike; `warmup` untimed rounds first."""
    times = {name: [] for name in steps}
    for i in range(warmup + repeat):
        for name, fn in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def profile(fn, repeat: int, top: int = 15) -> str:
    """cProfile of `repeat` calls of `fn`, the `top` functions by own time."""
    fn()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(repeat):
        fn()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def measure(args) -> dict:
    device = pick_device(args.device)
    dtype = torch.float16 if args.precision == "fp16" else torch.float32
    if dtype == torch.float16 and device.type != "cuda":
        raise WorkbookError("--precision fp16 needs a CUDA GPU; use --precision fp32 on the CPU")
    cfg = get_config()
    points = read_points(args.points) if args.points else make_scene(args.scene)
    voxels, coords = voxelize(torch.from_numpy(points).to(device), cfg)
    model = prepare_scn(place(build_scn(cfg), device), [(voxels, coords)], int8=True, progress=False)
    model = place(model, device, dtype)
    x = voxels.to(dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def forward():
        with quantizers_disabled(model), torch.no_grad():
            model(x, coords)

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "scn.onnx"
        if args.profile:  # where do the trace and the export spend their time? (not part of the figures)
            print("traced forward:\n" + profile(lambda: trace_scn(model, x, coords), args.repeat), file=sys.stderr)
            print("export:\n" + profile(lambda: export_scn(model, x, coords, out, dtype=dtype), args.repeat),
                  file=sys.stderr)
        figures = timed(dict(forward_s=forward,
                             traced_forward_s=lambda: trace_scn(model, x, coords),
                             export_s=lambda: export_scn(model, x, coords, out, dtype=dtype)),
                        device, args.repeat, args.warmup)
        figures["onnx_bytes"] = out.stat().st_size
    calib = prepare_scn(place(build_scn(cfg), device), [(voxels, coords)], int8=False, progress=False)
    start = time.perf_counter()
    calibrate(calib, [(voxels, coords)] * args.calib_scans, progress=False)
    figures["calibration_s_per_scan"] = (time.perf_counter() - start) / args.calib_scans
    figures.update(
        traced_over_forward=figures["traced_forward_s"] / figures["forward_s"],
        export_over_forward=figures["export_s"] / figures["forward_s"],
        peak_host_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux reports KiB
        peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        dtype=args.precision, points=len(points), voxels=int(voxels.shape[0]), repeat=args.repeat,
        torch_threads=torch.get_num_threads())
    return figures


def table(f: dict) -> str:
    rows = [("plain forward", f"{f['forward_s'] * 1e3:9.1f} ms", "1.00 x"),
            ("traced forward", f"{f['traced_forward_s'] * 1e3:9.1f} ms", f"{f['traced_over_forward']:.2f} x"),
            ("full export (trace + graph + save)", f"{f['export_s'] * 1e3:9.1f} ms",
             f"{f['export_over_forward']:.2f} x"),
            ("calibration, per scan", f"{f['calibration_s_per_scan'] * 1e3:9.1f} ms", "")]
    lines = [f"{f['device']}, {f['dtype']}, {f['points']} points, {f['voxels']} voxels, median of {f['repeat']}"]
    lines += [f"  {name:<36}{value}  {ratio}" for name, value, ratio in rows]
    gpu = f" / GPU {f['peak_gpu_mb']:.0f} MiB" if f["peak_gpu_mb"] is not None else ""
    lines.append(f"  {'peak memory':<36}host {f['peak_host_mb']:.0f} MiB{gpu}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--points", help="a lidar scan to use instead of a synthetic scene")
    p.add_argument("--scene", default="default", choices=sorted(SCENES), help="synthetic scene size")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", choices=("fp16", "fp32"), help="default: fp16 on CUDA, fp32 on the CPU")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per figure (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("--calib-scans", type=int, default=2, help="scans for the calibration figure")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--profile", action="store_true", help="also print a cProfile of the export (to stderr)")
    args = p.parse_args(argv)
    if args.precision is None:
        args.precision = "fp16" if pick_device(args.device).type == "cuda" else "fp32"
    try:
        figures = measure(args)
    except WorkbookError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(figures, sort_keys=True) if args.json else table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
