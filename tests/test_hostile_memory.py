"""Memory bounded by the input's size: a small file that declares gigabytes is refused before they are
allocated. Each case runs in a child process that reports its own peak resident memory (ru_maxrss).

Measured before the checks (the adversarial run): a 2 MiB checkpoint zip bomb reached 2.4 GiB, a 2 MiB
node_stats.npz 2.9 GiB, a graph whose grid attributes were 6x wider 4.4 GiB.
"""
import io
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest

from helpers.export import main as export
from tests.conftest import ROOT

CHILD = """
import resource, sys
limit = 3 * 2**30  # address space: a runaway allocation fails here instead of swamping the machine
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.exit(__import__(sys.argv[1], fromlist=["main"]).main(sys.argv[2:]))
"""
# A small process that runs the child and reports the child's peak: a process forked from this (large)
# pytest process would report pytest's own resident size as its peak (Linux keeps it across exec).
MEASURE = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
print("PEAK_MB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
sys.exit(code)
"""
BOUND_MB = 1200  # the refusals peaked at 275-491 MB here; the unchecked runs reached 2.4-4.4 GiB


def peak(module: str, argv) -> tuple:
    """(exit code, stderr, peak MB) of `python -m module argv` run in a child with a 3 GiB address space."""
    child = [sys.executable, "-c", CHILD, module, *map(str, argv)]
    done = subprocess.run([sys.executable, "-c", MEASURE, *child], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "PEAK_MB" in done.stdout, done.stderr[-3000:]
    return done.returncode, done.stderr, float(done.stdout.split("PEAK_MB")[1])


def deflated_zeros(path, member: str, size: int, prefix: bytes = b""):
    """A zip whose one member is `prefix` + `size` zero bytes, deflated (a few MB on disk)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(member, "w", force_zip64=True) as f:
            f.write(prefix)
            chunk = bytes(1 << 24)
            for _ in range(size // len(chunk)):
                f.write(chunk)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("memory")
    assert export(["--scene", "small", "--grid", "bevfusion-01", "--precision", "fp16", "--quiet", "--device", "cpu",
                   "--out", str(folder / "scn.onnx"), "--save-tensors", str(folder / "t")]) == 0
    return folder / "scn.onnx", folder / "t"


def test_a_checkpoint_zip_bomb_is_refused_before_it_inflates(tmp_path):
    bomb = tmp_path / "bomb.pth"
    deflated_zeros(bomb, "archive/data/0", 2 << 30)
    assert bomb.stat().st_size < 4 << 20
    code, err, mb = peak("helpers.export", ["--grid", "bevfusion-01", "--quiet", "--device", "cpu", "--scene", "small",
                                            "--checkpoint", bomb, "--out", tmp_path / "scn.onnx"])
    print(f"checkpoint zip bomb: exit {code}, peak {mb:.0f} MB")
    assert code == 2 and "declare" in err and str(bomb) in err and err.count("\n") == 1, err
    assert mb < BOUND_MB and not (tmp_path / "scn.onnx").exists()


def test_a_node_stats_zip_bomb_is_refused_before_it_inflates(saved, tmp_path):
    path, tensors = saved
    folder = tmp_path / "t"
    shutil.copytree(tensors, folder)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (2, 2 ** 27)})
    deflated_zeros(folder / "node_stats.npz", "float/conv0.npy", 2 << 30, header.getvalue())
    code, err, mb = peak("helpers.verify", [path, "--tensors", folder])
    print(f"node_stats.npz zip bomb: exit {code}, peak {mb:.0f} MB")
    assert code == 2 and "declare" in err and err.count("\n") == 1, err
    assert mb < BOUND_MB


def test_a_graph_claiming_a_wider_grid_is_refused_before_the_dense_map(saved, tmp_path):
    """Every grid attribute 6x wider: a consistent file, but its dense map would be 36x the output checked."""
    path, tensors = saved
    model = onnx.load(str(path))
    widen = {("SparseConvolution", "input_spatial_shape"): (0, 1),
             ("SparseConvolution", "output_spatial_shape"): (0, 1), ("ScatterDense", "input_spatial_shape"): (0, 1),
             ("ScatterDense", "output_shape"): (2, 3), ("Reshape", "dims"): (2, 3)}  # the x and y axes (xyz layout)
    for node in model.graph.node:
        for a in node.attribute:
            for axis in widen.get((node.op_type, a.name), ()):
                a.ints[axis] *= 6
    wide = tmp_path / "wide.onnx"
    onnx.save(model, str(wide))
    code, err, mb = peak("helpers.verify", [wide, "--tensors", tensors, "--other-graph"])
    print(f"grid 6x wider: exit {code}, peak {mb:.0f} MB")
    assert code == 1 and mb < BOUND_MB, err[-2000:]
