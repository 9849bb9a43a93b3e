"""Plot calibration time against the number of scans from `python -m helpers.bench --json` outputs.

    python tools/plot_calibration.py docs/bench/cpu_calibration.json [docs/bench/h200_calibration.json ...] \
        --out docs/calibration_scaling.svg

Each JSON file is one line: its measured points and the fitted line fixed + n x per-scan, with a
dotted line of slope 1.5 x (CPU) or 2 x (GPU) the plain forward, the per-scan targets. GPU runs are
drawn in wall time, CPU runs in CPU time (on a shared CPU the wall clock measures the other users).
Both axes are logarithmic: the GPU's tenths of a second and the CPU's tens of seconds share the plot.
"""
import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="bench --json outputs (one JSON object each)")
    p.add_argument("--out", default="docs/calibration_scaling.svg")
    args = p.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "calibration"  # the same figures give the same file
    fig, ax = plt.subplots(figsize=(9.6, 4.0))
    for path in args.runs:
        f = json.loads(Path(path).read_text())
        gpu = f["device"] != "cpu"
        # a shared CPU's wall clock mostly measures the other users: plot its CPU time (1 thread)
        cpu = "" if gpu else "_cpu"
        points, forward = f[f"calibration{cpu}_points"], f[f"forward{cpu}_s"]
        fixed, per_scan = f[f"calibration_fixed{cpu}_s"] or 0.0, f[f"calibration_per_scan{cpu}_s"]
        ns, ts = [n for n, _ in points], [t for _, t in points]
        clock = "wall time" if gpu else f"CPU time, {f['torch_threads']} thread"
        line, = ax.plot(ns, ts, "o", label=f"{f['device']}, {f['dtype']}, {f['voxels']:,} voxels ({clock})")
        n = [1 + (max(ns) - 1) * i / 63 for i in range(64)]  # curves on log axes
        ax.plot(n, [fixed + per_scan * k for k in n], "-", color=line.get_color(), lw=1,
                label=f"  fit: {fixed:.2f} s + n x {per_scan * 1e3:.0f} ms")
        factor = 2.0 if gpu else 1.5
        ax.plot(n, [fixed + factor * forward * k for k in n], ":", color=line.get_color(), lw=1,
                label=f"  target slope: {factor:g} x forward ({forward * 1e3:.0f} ms)")
    ax.set_xlabel("calibration scans")
    ax.set_ylabel("calibration time (s)")
    ax.set_title("Calibration time against the number of scans (python -m helpers.bench)", fontsize=9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([1, 2, 4, 8, 16, 32], ["1", "2", "4", "8", "16", "32"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes, not on the lines
    fig.tight_layout()
    fig.savefig(args.out, metadata={"Date": None})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
