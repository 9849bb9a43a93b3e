"""Hostile conditions for what export writes: a full disk, a folder where a tensor file goes, a kill
between two renames, modes read through a symlink, a warning before an error.

The contract: the graph and its tensors folder are one unit (both old or both new; a pair left mixed by a
SIGKILL is refused by verify's manifest check); a refused write is exit 2 with ONE line naming the path
and leaves the disk as it was; a replaced file keeps only its rwx bits.
"""
import errno
import hashlib
import json
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from helpers import files
from helpers.data.scene import make_scene
from helpers.errors import WorkbookError
from helpers.export import main as export
from helpers.verify import main as verify
from tests.conftest import ROOT

FP16 = ["--grid", "bevfusion-01", "--quiet", "--device", "cpu", "--precision", "fp16"]  # the quickest real export


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scan") / "scan.npy"
    np.save(path, make_scene("small")[:300])
    return path


def snapshot(folder: Path) -> dict:
    """Every path under the folder: its bytes' hash (or "dir") and its mode."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                         stat.S_IMODE(p.lstat().st_mode)) for p in sorted(folder.rglob("*"))}


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("failing_write", [1, 4, 7])  # a tensor file, another one, the graph
def test_a_full_disk_is_exit_2_and_leaves_the_old_export(tmp_path, capsys, monkeypatch, scan, failing_write):
    argv = FP16 + ["--points", str(scan), "--out", str(tmp_path / "scn.onnx"), "--save-tensors", str(tmp_path / "t")]
    assert export(argv) == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    write, calls = files._write_file, []

    def full_disk(path, content, mode):
        calls.append(path)
        if len(calls) == failing_write:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write(path, content, mode)
    monkeypatch.setattr(files, "_write_file", full_disk)
    assert export(argv + ["--layout", "zyx"]) == 2
    line = one_line(capsys)
    assert "no space left" in line and str(tmp_path) in line, line
    assert snapshot(tmp_path) == before  # nothing replaced, no temporary left


def test_a_fresh_export_on_a_full_disk_leaves_nothing(tmp_path, capsys, monkeypatch, scan):
    def full_disk(path, content, mode):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr(files, "_write_file", full_disk)
    assert export(FP16 + ["--points", str(scan), "--out", str(tmp_path / "scn.onnx"),
                          "--save-tensors", str(tmp_path / "t")]) == 2
    assert "no space left" in one_line(capsys)
    assert list(tmp_path.iterdir()) == []  # no empty tensors folder


def test_a_folder_where_a_tensor_file_goes_is_refused_before_any_work(tmp_path, capsys, scan):
    argv = FP16 + ["--points", str(scan), "--out", str(tmp_path / "scn.onnx"), "--save-tensors", str(tmp_path / "t")]
    assert export(argv) == 0
    capsys.readouterr()
    (tmp_path / "t" / "output_int8.npy").unlink()
    (tmp_path / "t" / "output_int8.npy").mkdir()
    before = snapshot(tmp_path)
    assert export(argv + ["--layout", "zyx"]) == 2
    line = one_line(capsys)
    assert "'output_int8.npy'" in line and "folder" in line
    assert snapshot(tmp_path) == before


def test_a_warning_before_an_error_keeps_the_error_one_line(tmp_path, capsys, monkeypatch):
    import helpers.export as cli

    def noisy(args):
        warnings.warn("a library has something to say\nover two lines", UserWarning)
        raise WorkbookError("--out x.onnx: a bad value; expected a good one")
    monkeypatch.setattr(cli, "check_args", noisy)
    assert export(["--out", str(tmp_path / "x.onnx")]) == 2
    assert one_line(capsys) == "error: --out x.onnx: a bad value; expected a good one"


def test_modes_are_never_read_through_a_symlink_nor_carry_special_bits(tmp_path, capsys, scan):
    saved = os.umask(0o022)
    try:
        target = tmp_path / "setuid-program"
        target.write_bytes(b"#!/bin/sh\n")
        target.chmod(0o4755)
        (tmp_path / "link.onnx").symlink_to(target)
        assert export(FP16 + ["--points", str(scan), "--out", str(tmp_path / "link.onnx")]) == 0
        new = (tmp_path / "link.onnx").lstat()
        assert stat.S_ISREG(new.st_mode) and stat.S_IMODE(new.st_mode) == 0o644  # the umask's, not the target's
        assert stat.S_IMODE(target.stat().st_mode) == 0o4755 and target.read_bytes() == b"#!/bin/sh\n"
        special = tmp_path / "special.onnx"
        special.write_bytes(b"old")
        special.chmod(0o6755 | stat.S_ISVTX)
        assert export(FP16 + ["--points", str(scan), "--out", str(special)]) == 0
        assert stat.S_IMODE(special.stat().st_mode) == 0o755  # rwx kept, setuid/setgid/sticky dropped
    finally:
        os.umask(saved)


# ----------------------------------------------------------------------------- killed between two renames
KILLED_CHILD = """
import os, signal, sys
from helpers import files
from helpers.export import main
out, tensors, scan, how = sys.argv[1:5]
argv = ["--grid", "bevfusion-01", "--quiet", "--device", "cpu", "--precision", "fp16", "--points", scan,
        "--out", out, "--save-tensors", tensors]
assert main(argv) == 0  # the old export
rename = os.rename
def killed_on_the_way(source, target):  # the renames of the second export: the folder swap uses os.rename
    rename(source, target)
    if str(target) == tensors:  # the new folder is in place; the graph's rename comes next
        os.kill(os.getpid(), signal.SIGTERM if how == "term" else signal.SIGKILL)
files.os.rename = killed_on_the_way
main(argv + ["--layout", "zyx"])
print("NOT KILLED")
"""


@pytest.mark.parametrize("how,code,verdict", [("term", -15, 0), ("kill", -9, 2)])
def test_killed_between_the_folder_and_the_graph(tmp_path, capsys, scan, how, code, verdict):
    """SIGTERM waits for the graph's rename (a new pair); SIGKILL cannot wait, and verify refuses the pair."""
    out, tensors = tmp_path / "scn.onnx", tmp_path / "t"
    done = subprocess.run([sys.executable, "-c", KILLED_CHILD, str(out), str(tensors), str(scan), how], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == code, done.stdout[-2000:] + done.stderr[-2000:]
    manifest = json.loads((tensors / "manifest.json").read_text())
    graph_matches = manifest["graph_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert graph_matches == (how == "term")
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    if how == "term":
        assert not hidden  # no temporary, no old folder left
    else:  # nothing runs after a SIGKILL: the hidden temporaries stay (the names say what they are)
        assert sorted(h.split(".")[1] for h in hidden) == ["scn", "t"]
        assert all(h.endswith((".tmp", ".old")) for h in hidden)
    assert verify([str(out), "--tensors", str(tensors)]) == verdict
    if verdict == 2:
        assert "stale pair" in one_line(capsys)
