"""The command line imports only what it uses: no plotting, widgets, notebook or onnxruntime modules,
and not scipy.stats (pytorch-quantization imports it for one function the workbook does not call)."""
import json
import os
import subprocess
import sys

from tests.conftest import ROOT

HEAVY = ["matplotlib", "ipywidgets", "IPython", "onnxruntime", "netron", "scipy.stats", "pandas", "PIL"]

CHILD = """
import json, sys
import helpers.export as cli
code = cli.main(sys.argv[2:])
json.dump({"code": code, "modules": sorted(sys.modules)}, open(sys.argv[1], "w"))
"""


def test_export_command_imports_nothing_heavy(tmp_path):
    report = tmp_path / "modules.json"
    args = ["--scene", "small", "--grid", "bevfusion-01", "--calibrate", "1", "--quiet", "--device", "cpu",
            "--out", str(tmp_path / "scn.onnx")]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", CHILD, str(report), *args], env=env, check=True, cwd=tmp_path,
                   stdout=subprocess.DEVNULL)
    done = json.loads(report.read_text())
    assert done["code"] == 0
    loaded = [name for name in HEAVY if name in done["modules"]]
    assert loaded == [], f"python -m helpers.export imported {loaded}"
    assert "pytorch_quantization.calib.histogram" in done["modules"]  # the library itself is there
