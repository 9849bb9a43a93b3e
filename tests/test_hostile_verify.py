"""Hostile input to `python -m helpers.verify`: damaged graphs, damaged --tensors folders, stale pairs.

The contract: exit 1 with a verdict naming the node and attribute when the file breaks the contract;
exit 2 with ONE line naming the file when an input cannot be read (or the folder belongs to another
graph); exit 3 only for a bug. Never a traceback for a damaged file, never a pickle loaded, and the
verdict does not depend on the memory order of valid arrays.
"""
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import AttributeProto

from helpers.check.contract import check_contract
from helpers.export import main as export
from helpers.verify import main as verify
from tests.tamper import DAMAGES, attribute_retyped

SMALL = ["--scene", "small", "--grid", "bevfusion-01", "--calibrate", "1", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An int8 file and its --save-tensors folder, written by the export command line."""
    folder = tmp_path_factory.mktemp("hostile-verify")
    assert export(SMALL + ["--out", str(folder / "scn.onnx"), "--save-tensors", str(folder / "t")]) == 0
    return folder / "scn.onnx", folder / "t"


def run(capsys, argv):
    code = verify([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("what", list(DAMAGES))
def test_damaged_graph_gets_a_verdict_naming_node_and_attribute(saved, tmp_path, capsys, what):
    path, tensors = saved
    damage, node, attribute = DAMAGES[what]
    bad = tmp_path / "bad.onnx"
    onnx.save(damage(onnx.load(str(path))), str(bad))
    code, out, err = run(capsys, [bad, "--tensors", tensors, "--other-graph"])
    assert code == 1, f"exit {code}\n{out}\n{err}"
    assert all(line.startswith("warning: ") for line in err.splitlines()), err  # no traceback, no error line
    named = [line for line in out.splitlines() if line.startswith("  - ")]
    assert any(f"node {node} " in line and attribute in line for line in named), out


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(node=st.integers(0, 39), kind=st.sampled_from([0, 1, 2, 3, 4, 6, 7, 8]), pick=st.integers(0, 10**6))
def test_any_attribute_of_any_type_is_named_never_a_crash(saved, node, kind, pick):
    """Property: any attribute of any node stored with any other ONNX type is named by the checker (every
    attribute the exporter writes is one the contract types), and the checker never raises."""
    path, _ = saved
    model = onnx.load(str(path))
    target = model.graph.node[node]
    if not target.attribute:  # a Relu
        return
    name = target.attribute[pick % len(target.attribute)].name
    if next(a for a in target.attribute if a.name == name).type == kind:
        return
    problems = check_contract(attribute_retyped(model, target.name, name, kind))
    assert any(f"node {target.name} " in p and repr(name) in p for p in problems), f"{name} as {kind}: {problems}"


def test_fortran_ordered_arrays_give_the_same_verdict(saved, tmp_path, capsys):
    """coors.npy and voxels.npy saved in Fortran order (the same values) once read as garbage at conv0."""
    path, tensors = saved
    code, out, _ = run(capsys, [path, "--tensors", tensors])
    assert code == 0
    copy = tmp_path / "t"
    shutil.copytree(tensors, copy)
    for name in ("coors.npy", "voxels.npy"):
        array = np.load(copy / name)
        np.save(copy / name, np.asfortranarray(array))
        assert np.load(copy / name).flags.f_contiguous and np.array_equal(np.load(copy / name), array)
    code_f, out_f, err_f = run(capsys, [path, "--tensors", copy])
    assert code_f == 0, out_f + err_f
    assert out_f.splitlines()[1:] == out.splitlines()[1:]


def stats_damaged(tensors: Path, folder: Path, how: str) -> Path:
    """A copy of the --save-tensors folder whose node_stats.npz is damaged `how`."""
    shutil.copytree(tensors, folder)
    stats = folder / "node_stats.npz"
    if how == "truncated":
        stats.write_bytes(stats.read_bytes()[:5000])
    elif how == "garbage after the zip header":
        stats.write_bytes(stats.read_bytes()[:40] + bytes(range(256)) * 200)
    elif how == "object array":
        buffer = io.BytesIO()
        np.save(buffer, np.array([1, "x", None], dtype=object), allow_pickle=True)
        with zipfile.ZipFile(stats, "w") as archive:
            archive.writestr("float/conv0.npy", buffer.getvalue())
    elif how.startswith("dtype "):
        arrays = dict(np.load(stats))
        arrays["dtype"] = np.array(how.split()[1])
        np.savez(stats, **arrays)
    elif how == "zip bomb":
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (2, 10**8)})
        with zipfile.ZipFile(stats, "w", zipfile.ZIP_DEFLATED) as archive:
            with archive.open("float/conv0.npy", "w", force_zip64=True) as member:
                member.write(header.getvalue())
                for _ in range(100):
                    member.write(bytes(16 * 10**6 // 10))
    return folder


@pytest.mark.parametrize("how,words", [
    ("truncated", "not a readable .npz"), ("garbage after the zip header", "not a readable .npz"),
    ("object array", "Python objects"), ("dtype bogus", "dtype is 'bogus'"), ("dtype load", "dtype is 'load'"),
    ("zip bomb", "declare")])
def test_damaged_node_stats_is_one_line_exit_2(saved, tmp_path, capsys, how, words):
    path, tensors = saved
    folder = stats_damaged(tensors, tmp_path / "t", how)
    code, out, err = run(capsys, [path, "--tensors", folder])
    line = one_line_error(err)
    assert code == 2 and "node_stats.npz" in line and words in line, line


def test_npy_declaring_more_than_it_holds_is_refused(saved, tmp_path, capsys):
    path, tensors = saved
    folder = tmp_path / "t"
    shutil.copytree(tensors, folder)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1, 256, 10**6)})
    (folder / "output.npy").write_bytes(header.getvalue() + bytes(64))
    code, _, err = run(capsys, [path, "--tensors", folder])
    line = one_line_error(err)
    assert code == 2 and "output.npy" in line and "truncated" in line


def test_empty_onnx_is_bad_input(tmp_path, capsys):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    code, _, err = run(capsys, [empty])
    line = one_line_error(err)
    assert code == 2 and "not an ONNX file" in line and str(empty) in line


def test_a_stale_pair_is_refused(saved, tmp_path, capsys):
    """The folder's manifest names the graph's sha256: the folder beside another graph is exit 2."""
    path, tensors = saved
    other = tmp_path / "other.onnx"
    onnx.save(attribute_retyped(onnx.load(str(path)), "conv1", "precision", AttributeProto.STRING), str(other))
    code, _, err = run(capsys, [other, "--tensors", tensors])
    line = one_line_error(err)
    assert code == 2 and "stale pair" in line and "--other-graph" in line
    folder = tmp_path / "t"
    shutil.copytree(tensors, folder)
    (folder / "manifest.json").unlink()
    code, _, err = run(capsys, [path, "--tensors", folder])
    assert code == 2 and "manifest.json: missing" in one_line_error(err)
