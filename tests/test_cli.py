"""The command line, `python -m helpers.export`, as an engineer uses it: files, checks, exit codes."""
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from helpers.check.contract import BEVFUSION_OPS, check_contract
from helpers.check.rerun import run_graph
from helpers.data.scene import make_scene
from helpers.export import main
from tests.conftest import ROOT

# The CPU path, as CI runs it; the CUDA path of the command line is in tests/test_gpu.py.
SMALL = ["--scene", "small", "--grid", "bevfusion-01", "--calibrate", "2", "--quiet", "--device", "cpu"]


def test_help_documents_every_option(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for option in ["--points", "--checkpoint", "--precision", "--layout", "--device", "--calibrate",
                   "--save-tensors", "--out", "--columns", "--grid", "--calib-points"]:
        assert option in text


def test_export_writes_a_checked_graph_and_the_tensors(tmp_path, capsys):
    out = tmp_path / "scn.onnx"
    assert main(SMALL + ["--out", str(out), "--save-tensors", str(tmp_path / "t")]) == 0
    printed = capsys.readouterr().out
    assert "40 nodes (21 SparseConvolution, 8 Add, 8 Relu, 1 ScatterDense, 1 Transpose, 1 Reshape)" in printed
    assert "contract check: passed" in printed and "(agrees)" in printed and "DISAGREES" not in printed
    assert check_contract(out, op_counts=BEVFUSION_OPS) == []
    voxels = np.load(tmp_path / "t" / "voxels.npy")
    coors = np.load(tmp_path / "t" / "coors.npy")
    output = np.load(tmp_path / "t" / "output.npy")
    assert voxels.dtype == np.float16 and voxels.shape[1] == 5 and coors.dtype == np.int32
    assert output.dtype == np.float32 and output.shape == (1, 256, 128, 128)
    # the saved tensors and the saved graph agree: the engineer's reference data is consistent
    rerun = run_graph(out, torch.from_numpy(voxels.astype(np.float32)), torch.from_numpy(coors))
    assert np.abs(rerun.numpy() - output).max() <= 1e-4


def test_node_log_is_printed_as_the_trace_runs(tmp_path, capsys):
    assert main(["--scene", "small", "--grid", "bevfusion-01", "--calibrate", "1", "--precision", "fp16",
                 "--layout", "zyx", "--device", "cpu", "--out", str(tmp_path / "scn.onnx")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  conv")]
    assert len(lines) == 21 and "conv_input.0" in lines[0] and "[41, 1024, 1024]" in lines[0]
    model = onnx.load(str(tmp_path / "scn.onnx"))
    precisions = {a.s for n in model.graph.node for a in n.attribute if a.name == "precision"}
    assert precisions == {b"fp16"}  # --precision fp16: no int8 layer, no dynamic ranges
    assert not any(a.name.endswith("dynamic_range") for n in model.graph.node for a in n.attribute)


def test_same_inputs_give_the_same_bytes(tmp_path):
    for name in ("a.onnx", "b.onnx"):
        assert main(SMALL + ["--out", str(tmp_path / name)]) == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_a_real_scan_and_a_kitti_file(tmp_path):
    points = make_scene("small")[:, :4].copy()  # x, y, z, reflectance: KITTI's layout
    points.tofile(tmp_path / "000001.bin")
    assert main(["--points", str(tmp_path / "000001.bin"), "--columns", "4", "--grid", "bevfusion-01", "--quiet",
                 "--device", "cpu", "--out", str(tmp_path / "kitti.onnx")]) == 0
    assert check_contract(tmp_path / "kitti.onnx", op_counts=BEVFUSION_OPS) == []


@pytest.mark.parametrize("make_bad,message", [
    (lambda d: d / "missing.bin", "missing.bin"),
    (lambda d: (d / "odd.bin").write_bytes(b"\0" * 21) and d / "odd.bin", "odd.bin"),
    (lambda d: np.save(d / "nan.npy", np.full((4, 5), np.nan, np.float32)) or d / "nan.npy", "nan.npy"),
    (lambda d: np.save(d / "far.npy", np.full((4, 5), 500.0, np.float32)) or d / "far.npy", "far.npy: none of the 4 points lies inside point_range"),
])
def test_bad_points_exit_2_with_one_line_and_no_file(tmp_path, capsys, make_bad, message):
    bad = make_bad(tmp_path)
    out = tmp_path / "out" / "scn.onnx"
    assert main(["--points", str(bad), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()  # nothing written, not even the folder


def test_bad_checkpoint_and_options(tmp_path, capsys):
    torch.save({"head.weight": torch.zeros(2)}, tmp_path / "det.pth")
    assert main(SMALL + ["--checkpoint", str(tmp_path / "det.pth"), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "det.pth: no lidar backbone keys" in err and err.count("\n") == 1
    assert not (tmp_path / "x.onnx").exists()
    assert main(["--out", str(tmp_path / "x.txt")]) == 2  # argparse's own usage error
    assert main(["--calibrate", "0"]) == 2


def test_module_entry_point_and_exit_code():
    """`python -m helpers.export` really runs as a program and reports bad input with code 2."""
    done = subprocess.run([sys.executable, "-m", "helpers.export", "--points", "nowhere.bin"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: --points nowhere.bin")
