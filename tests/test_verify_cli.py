"""`python -m helpers.verify FILE [--tensors DIR]`: exit 0 on a good file, 1 on a tampered one (the node
named), 2 on bad input; and the export command line runs the same checks."""
import subprocess
import sys

import numpy as np
import onnx
import pytest

from helpers.export import main as export
from helpers.verify import main as verify
from tests.conftest import ROOT
from tests.tamper import TAMPERS

SMALL = ["--scene", "small", "--grid", "bevfusion-01", "--calibrate", "1", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An int8 file and its --save-tensors folder, written by the export command line."""
    folder = tmp_path_factory.mktemp("verify")
    assert export(SMALL + ["--out", str(folder / "scn.onnx"), "--save-tensors", str(folder / "t")]) == 0
    return folder / "scn.onnx", folder / "t"


def test_export_writes_the_fake_quant_output_and_runs_both_re_runs(saved, capsys):
    path, tensors = saved
    assert {p.name for p in tensors.iterdir()} == {"voxels.npy", "coors.npy", "output.npy", "output_int8.npy",
                                                   "manifest.json", "node_stats.npz"}
    float_out, int8_out = np.load(tensors / "output.npy"), np.load(tensors / "output_int8.npy")
    assert int8_out.dtype == np.float32 and int8_out.shape == float_out.shape == (1, 256, 128, 128)
    assert not np.array_equal(int8_out, float_out)
    with np.load(tensors / "node_stats.npz") as stats:
        assert str(stats["dtype"]) == "float32" and {"float/conv0", "int8/reshape0"} <= set(stats.files)


def test_good_file_exits_0(saved, capsys):
    path, tensors = saved
    assert verify([str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["contract check: passed"]
    assert verify([str(path), "--tensors", str(tensors)]) == 0
    out = capsys.readouterr().out
    assert "float re-run of the file vs the PyTorch output: cosine 1.000000, max abs 0 (agrees)" in out
    assert "int8 re-run of the file vs the fake-quant PyTorch output: cosine 1.000000, max abs 0 (agrees)" in out


@pytest.mark.parametrize("what", list(TAMPERS))
def test_tampered_file_exits_1_naming_the_node(saved, tmp_path, capsys, what):
    path, tensors = saved
    tamper, node = TAMPERS[what]
    onnx.save(tamper(onnx.load(str(path))), str(tmp_path / "tampered.onnx"))
    assert verify([str(tmp_path / "tampered.onnx")]) == 0  # every value is still well formed: the contract passes
    capsys.readouterr()
    assert verify([str(tmp_path / "tampered.onnx"), "--tensors", str(tensors)]) == 2  # not the graph of the folder
    assert "a stale pair" in capsys.readouterr().err
    assert verify([str(tmp_path / "tampered.onnx"), "--tensors", str(tensors), "--other-graph"]) == 1
    out = capsys.readouterr().out
    print(f"{what}:\n{out}")
    assert "int8 re-run of the file vs the fake-quant PyTorch output" in out and "DISAGREES" in out
    assert f"first node that differs: {node} " in out


def test_bad_input_exits_2_with_one_line(saved, tmp_path, capsys):
    path, tensors = saved
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("voxels.npy", "coors.npy", "output.npy"):
        (partial / name).write_bytes((tensors / name).read_bytes())
    cases = {(str(tmp_path / "missing.onnx"),): "no such file",
             (str(tmp_path / "junk.onnx"),): "not an ONNX file",
             (str(path), "--tensors", str(tmp_path / "nowhere")): "not a folder",
             (str(path), "--tensors", str(partial)): "output_int8.npy: missing"}
    for argv, message in cases.items():
        assert verify(list(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_command_line_runs_as_a_module(saved):
    path, tensors = saved
    done = subprocess.run([sys.executable, "-m", "helpers.verify", str(path), "--tensors", str(tensors)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "int8 re-run of the file" in done.stdout
