"""python -m helpers.bench as a program: a tiny scan, one timed run, one JSON object of positive figures."""
import json
import os
import subprocess
import sys

import numpy as np

from tests.conftest import ROOT

FIGURES = {"forward_s", "traced_forward_s", "export_s", "calibration_per_scan_s", "traced_over_forward",
           "export_over_forward", "onnx_bytes", "peak_host_mb", "points", "voxels"}


def test_bench_prints_one_json_object_of_positive_figures(tmp_path):
    rng = np.random.default_rng(0)
    points = np.zeros((400, 5), np.float32)  # a small cluster in front of the car: a few hundred voxels
    points[:, :3] = rng.uniform([4.0, -2.0, -1.5], [8.0, 2.0, 0.5], size=(400, 3))
    points[:, 3] = rng.uniform(0, 255, 400)
    np.save(tmp_path / "tiny.npy", points)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "helpers.bench", "--points", str(tmp_path / "tiny.npy"),
                           "--device", "cpu", "--repeat", "1", "--warmup", "0", "--calib-scans", "1", "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert FIGURES <= set(figures), f"missing {sorted(FIGURES - set(figures))}"
    assert all(figures[name] > 0 for name in FIGURES), {name: figures[name] for name in FIGURES}
    assert figures["points"] == 400 and 0 < figures["voxels"] <= 400
    assert (figures["device"], figures["dtype"], figures["peak_gpu_mb"], figures["repeat"]) == ("cpu", "fp32", None, 1)
