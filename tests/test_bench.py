"""python -m helpers.bench as a program: the small scene, one timed run, one JSON object of positive figures."""
import json
import os
import subprocess
import sys

from tests.conftest import ROOT

FIGURES = {"forward_s", "traced_forward_s", "export_s", "calibration_s_per_scan", "traced_over_forward",
           "export_over_forward", "onnx_bytes", "peak_host_mb", "points", "voxels"}


def test_bench_prints_one_json_object_of_positive_figures(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "helpers.bench", "--scene", "small", "--device", "cpu",
                           "--repeat", "1", "--warmup", "0", "--calib-scans", "1", "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert FIGURES <= set(figures), f"missing {sorted(FIGURES - set(figures))}"
    assert all(figures[name] > 0 for name in FIGURES), {name: figures[name] for name in FIGURES}
    assert figures["points"] == 20000 and 0 < figures["voxels"] <= 20000
    assert (figures["device"], figures["peak_gpu_mb"], figures["repeat"]) == ("cpu", None, 1)
