"""How much do tracing and calibration cost? Timings of the export steps on the same input.

    python -m helpers.bench                        # default synthetic scene, auto device
    python -m helpers.bench --scene full --device cuda --dtype fp16 --json
    python -m helpers.bench --calib-scans 1 8 32   # calibration = fixed part + per-scan part
    python -m helpers.bench --startup              # where the command line's time goes

Every figure is the median of --repeat runs after --warmup runs; CUDA work is synchronised before
each clock reading. Ratios are taken within one run, so they compare like with like. CPU time
(process time) is reported beside wall time: on a shared machine it is the steadier figure.
"""
import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from helpers.config import get_config
from helpers.data.points import read_points
from helpers.data.scene import SCENES, make_scene
from helpers.data.voxelize import voxelize
from helpers.errors import WorkbookError
from helpers.files import temporary_folder
from helpers.model import build_scn, pick_device, place
from helpers.pipeline import export_scn, prepare_scn, trace_scn
from helpers.quant.calibrate import calibrate
from helpers.quant.precision import quantizers_disabled

ROOT = Path(__file__).resolve().parents[1]


def timed(steps: dict, device, repeat: int, warmup: int) -> dict:
    """Median wall seconds (name) and CPU seconds (name_cpu) of each function in `steps`, run in turns
    (a, b, c, a, b, c, ...) so that drift of clocks or load hits every figure alike; `warmup` untimed
    rounds first."""
    times = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    for i in range(warmup + repeat):
        for name, fn in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    figures = {name: statistics.median(values) for name, values in times.items()}
    figures.update({name.replace("_s", "_cpu_s"): statistics.median(values) for name, values in cpu.items()})
    return figures


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


def fit_line(points):
    """Least squares t = fixed + per_item * n over [(n, t), ...]: (fixed, per_item)."""
    ns, ts = [n for n, _ in points], [t for _, t in points]
    if len(set(ns)) < 2:
        return None, ts[0] / ns[0]
    mean_n, mean_t = statistics.fmean(ns), statistics.fmean(ts)
    slope = sum((n - mean_n) * (t - mean_t) for n, t in points) / sum((n - mean_n) ** 2 for n in ns)
    return mean_t - slope * mean_n, slope


def calibration_sweep(cfg, device, batch, counts, repeat: int) -> dict:
    """Calibration time for each number of scans in `counts` (the same scan repeated), in turns,
    median of `repeat`; fitted into a fixed part and a per-scan part (wall and CPU time)."""
    wall = {n: [] for n in counts}
    cpu = {n: [] for n in counts}
    float_model = place(build_scn(cfg), device)
    calibrate(prepare_scn(float_model, [batch], int8=False, progress=False), [batch], progress=False)  # warm-up
    for _ in range(repeat):
        for n in counts:
            model = prepare_scn(float_model, [batch], int8=False, progress=False)  # quantized, not calibrated
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, start_cpu = time.perf_counter(), time.process_time()
            calibrate(model, [batch] * n, progress=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall[n].append(time.perf_counter() - start)
            cpu[n].append(time.process_time() - start_cpu)
    points = [(n, statistics.median(wall[n])) for n in counts]
    cpu_points = [(n, statistics.median(cpu[n])) for n in counts]
    fixed, per_scan = fit_line(points)
    fixed_cpu, per_scan_cpu = fit_line(cpu_points)
    return dict(calibration_points=points, calibration_cpu_points=cpu_points,
                calibration_fixed_s=fixed, calibration_per_scan_s=per_scan,
                calibration_fixed_cpu_s=fixed_cpu, calibration_per_scan_cpu_s=per_scan_cpu)


def measure(args) -> dict:
    device = pick_device(args.device)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
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

    with temporary_folder(prefix="scn-bench-") as folder:  # removed on exit and on SIGTERM too
        out = Path(folder) / "scn.onnx"
        if args.profile:  # where do the trace and the export spend their time? (not part of the figures)
            print("traced forward:\n" + profile(lambda: trace_scn(model, x, coords), args.repeat), file=sys.stderr)
            print("export:\n" + profile(lambda: export_scn(model, x, coords, out, dtype=dtype), args.repeat),
                  file=sys.stderr)
        steps = dict(forward_s=forward)
        if not args.calibration_only:
            steps.update(traced_forward_s=lambda: trace_scn(model, x, coords),
                         export_s=lambda: export_scn(model, x, coords, out, dtype=dtype))
        figures = timed(steps, device, args.repeat, args.warmup)
        if not args.calibration_only:
            figures["onnx_bytes"] = out.stat().st_size
            figures.update(traced_over_forward=figures["traced_forward_s"] / figures["forward_s"],
                           export_over_forward=figures["export_s"] / figures["forward_s"])
    if args.calib_scans:
        if args.profile:
            fresh = prepare_scn(place(build_scn(cfg), device), [(voxels, coords)], int8=False, progress=False)
            print("calibration:\n" + profile(lambda: calibrate(fresh, [(voxels, coords)] * max(args.calib_scans),
                                                                progress=False), 1), file=sys.stderr)
        figures.update(calibration_sweep(cfg, device, (voxels, coords), sorted(set(args.calib_scans)),
                                         args.calib_repeat))
        figures["calibration_per_scan_over_forward"] = figures["calibration_per_scan_s"] / figures["forward_s"]
    figures.update(
        peak_host_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux reports KiB
        peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        dtype=args.dtype, points=len(points), voxels=int(voxels.shape[0]), repeat=args.repeat,
        torch_threads=torch.get_num_threads())
    return figures


def table(f: dict) -> str:
    lines = [f"{f['device']}, {f['dtype']}, {f['points']} points, {f['voxels']} voxels, median of {f['repeat']}"]
    rows = [("plain forward", f["forward_s"], "1.00 x", f["forward_cpu_s"])]
    if "traced_forward_s" in f:
        rows += [("traced forward", f["traced_forward_s"], f"{f['traced_over_forward']:.2f} x",
                  f["traced_forward_cpu_s"]),
                 ("full export (trace + graph + save)", f["export_s"], f"{f['export_over_forward']:.2f} x",
                  f["export_cpu_s"])]
    if "calibration_per_scan_s" in f:
        if f["calibration_fixed_s"] is not None:
            rows.append(("calibration, fixed part", f["calibration_fixed_s"], "", f["calibration_fixed_cpu_s"]))
        rows.append(("calibration, per scan", f["calibration_per_scan_s"],
                     f"{f['calibration_per_scan_over_forward']:.2f} x", f["calibration_per_scan_cpu_s"]))
    lines.append(f"  {'':<36}{'wall':>12}  {'':6}  {'CPU time':>12}")
    lines += [f"  {name:<36}{wall * 1e3:9.1f} ms  {ratio:6}  {cpu * 1e3:9.1f} ms" for name, wall, ratio, cpu in rows]
    if "calibration_points" in f:
        scans = ", ".join(f"{n} scans {t:.2f} s" for n, t in f["calibration_points"])
        lines.append(f"  {'calibration (wall)':<36}{scans}")
    gpu = f" / GPU {f['peak_gpu_mb']:.0f} MiB" if f["peak_gpu_mb"] is not None else ""
    lines.append(f"  {'peak memory':<36}host {f['peak_host_mb']:.0f} MiB{gpu}")
    return "\n".join(lines)


# --- start-up: where does the command line's time go? ---

# Runs in a child process: times the imports, wraps the pipeline's steps with timers, runs the CLI,
# and writes {phase: seconds} as JSON to the file named by argv[1].
CHILD = """
import json, sys, time
t0 = time.perf_counter()
import torch, spconv.pytorch
t1 = time.perf_counter()
import onnx
t2 = time.perf_counter()
import helpers.quant  # pytorch-quantization, imported the way the workbook imports it
t3 = time.perf_counter()
import helpers.export as cli
t4 = time.perf_counter()
from helpers.bench import phase_timers
spent = phase_timers()
code = cli.main(sys.argv[2:])
if torch.cuda.is_initialized():
    torch.cuda.synchronize()
t5 = time.perf_counter()
spent.update({"import torch, spconv": t1 - t0, "import onnx": t2 - t1,
              "import pytorch_quantization": t3 - t2, "import helpers (ours)": t4 - t3,
              "in process": t5 - t0, "exit code": code})
json.dump(spent, open(sys.argv[1], "w"))
"""

# (module, function, phase): the steps of `python -m helpers.export`, timed where they are looked up.
PHASES = [("helpers.export", "run", "rest of the command (arguments, model build, printing)"),
          ("helpers.export", "prepare_scn", "prepare: copy, quantize, fuse, fp16 weights"),
          ("helpers.export", "export_scn", "export: dynamic ranges, fp16 model"),
          ("helpers.export", "load_batches", "scenes + voxelize"),
          ("helpers.export", "build_scn", "build model"),
          ("helpers.pipeline", "calibrate", "calibration"),
          ("helpers.pipeline", "trace_scn", "trace"),
          ("helpers.pipeline", "make_scn_model", "graph build"),
          ("helpers.export", "reference_run", "reference runs (float + fake int8, node by node)"),
          ("helpers.files", "write_all_atomic", "write"),
          ("helpers.pipeline", "save_atomic", "write"),
          ("helpers.export", "check_file", "checks (contract, float and int8 re-runs of the file)"),
          ("helpers.export", "check_contract", "checks (contract, float and int8 re-runs of the file)"),
          ("helpers.export", "run_graph", "checks (contract, float and int8 re-runs of the file)")]


def phase_timers() -> dict:
    """Wrap the CLI's steps (PHASES) with timers that add to the returned dict (CUDA synchronised).
    A step's time excludes the wrapped steps inside it, so nothing is counted twice."""
    import importlib

    spent, inner = {}, [0.0]  # inner: time of wrapped steps inside the running one

    def timer(fn, phase):
        def timed_step(*args, **kwargs):
            if torch.cuda.is_initialized():
                torch.cuda.synchronize()
            start, outer, inner[0] = time.perf_counter(), inner[0], 0.0
            try:
                return fn(*args, **kwargs)
            finally:
                if torch.cuda.is_initialized():
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
                spent[phase] = spent.get(phase, 0.0) + elapsed - inner[0]
                inner[0] = outer + elapsed
        return timed_step

    for module, name, phase in PHASES:
        module = importlib.import_module(module)
        if hasattr(module, name):
            setattr(module, name, timer(getattr(module, name), phase))
    return spent


def startup(args) -> dict:
    """Wall time of `python -m helpers.export` (default scene, 4 calibration scans) against a bare
    `import torch, spconv.pytorch`, each in fresh processes (median of --startup-repeat), and where the
    command's time goes."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    bare, cli, phases, bare_cpu, cli_cpu = [], [], [], [], []

    def children_cpu():
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    with temporary_folder(prefix="scn-bench-") as folder:  # removed on exit and on SIGTERM too
        report = Path(folder) / "phases.json"
        command = [*args.startup_args, "--out", str(Path(folder) / "scn.onnx"), "--device", args.device]
        for _ in range(args.startup_repeat):
            start, start_cpu = time.perf_counter(), children_cpu()
            subprocess.run([sys.executable, "-c", "import torch, spconv.pytorch"], env=env, check=True)
            bare.append(time.perf_counter() - start)
            bare_cpu.append(children_cpu() - start_cpu)
            start, start_cpu = time.perf_counter(), children_cpu()
            done = subprocess.run([sys.executable, "-c", CHILD, str(report), *command], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            cli.append(time.perf_counter() - start)
            cli_cpu.append(children_cpu() - start_cpu)
            if done.returncode != 0:
                raise WorkbookError(f"python -m helpers.export {' '.join(command)} exited {done.returncode}: "
                                    f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
            phases.append(json.loads(report.read_text()))
    names = list(dict.fromkeys(name for p in phases for name in p if name not in ("exit code",)))
    breakdown = {name: statistics.median(p.get(name, 0.0) for p in phases) for name in names}
    known = sum(v for k, v in breakdown.items() if k != "in process")
    breakdown["interpreter start and exit"] = statistics.median(cli) - known
    wall, bare_wall = statistics.median(cli), statistics.median(bare)
    return dict(startup_command="python -m helpers.export " + " ".join(args.startup_args),
                startup_cli_s=wall, startup_bare_import_s=bare_wall, startup_own_share_s=wall - bare_wall,
                startup_cli_cpu_s=statistics.median(cli_cpu), startup_bare_import_cpu_s=statistics.median(bare_cpu),
                startup_phases_s=breakdown, startup_repeat=args.startup_repeat)


def startup_table(f: dict) -> str:
    lines = [f"{f['startup_command']} (median of {f['startup_repeat']} fresh processes)",
             f"  {'command, process start to exit':<44}{f['startup_cli_s']:7.2f} s",
             f"  {'bare: import torch, spconv.pytorch':<44}{f['startup_bare_import_s']:7.2f} s",
             f"  {'the command line own share':<44}{f['startup_own_share_s']:7.2f} s",
             f"  {'CPU time: command / bare import':<44}{f['startup_cli_cpu_s']:7.2f} s / "
             f"{f['startup_bare_import_cpu_s']:.2f} s", "  where it goes (wall):"]
    lines += [f"    {name:<42}{seconds:7.2f} s" for name, seconds in f["startup_phases_s"].items()
              if name != "in process"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--points", help="a lidar scan to use instead of a synthetic scene")
    p.add_argument("--scene", default="default", choices=sorted(SCENES), help="synthetic scene size")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dtype", choices=("fp16", "fp32"), help="default: fp16 on CUDA, fp32 on the CPU")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per figure (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("--calib-scans", type=int, nargs="*", default=[1, 8], metavar="N",
                   help="calibrate on N scans for each N given, and fit time = fixed + N x per scan "
                        "(default: 1 8; the issue's sweep is 1 8 32; none: no calibration figure)")
    p.add_argument("--calib-repeat", type=int, default=1, help="runs of each calibration (median)")
    p.add_argument("--calibration-only", action="store_true", help="time the forward and calibration only")
    p.add_argument("--startup", action="store_true",
                   help="instead: time the command line in fresh processes against a bare torch + spconv import")
    p.add_argument("--startup-repeat", type=int, default=3, help="fresh processes per start-up figure (median)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--profile", action="store_true", help="also print cProfiles of export and calibration (stderr)")
    args = p.parse_args(argv)
    if args.dtype is None:
        args.dtype = "fp16" if pick_device(args.device).type == "cuda" else "fp32"
    args.startup_args = ["--scene", args.scene, "--calibrate", "4", "--quiet"]
    try:
        figures = startup(args) if args.startup else measure(args)
    except WorkbookError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    else:
        print(startup_table(figures) if args.startup else table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
