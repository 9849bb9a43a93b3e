"""helpers.files: writes that leave nothing partial (errors, SIGTERM), respect the umask and keep the mode
of the file they replace; temporary folders that cannot outlive their process."""
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from helpers import files
from helpers.errors import WorkbookError
from tests.conftest import ROOT


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set a umask for one test; the old one comes back."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_to(value):
        os.umask(value)
    yield set_to
    os.umask(saved)


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_respect_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    files.write_atomic(tmp_path / "a.onnx", b"abc")
    assert mode(tmp_path / "a.onnx") == expected and (tmp_path / "a.onnx").read_bytes() == b"abc"


@pytest.mark.parametrize("old_mode", [0o644, 0o600, 0o640])
def test_overwrite_keeps_the_mode(tmp_path, umask, old_mode):
    umask(0o077)
    target = tmp_path / "a.onnx"
    target.write_bytes(b"old")
    target.chmod(old_mode)
    files.write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and mode(target) == old_mode


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.onnx"
    target.write_bytes(b"old")

    def writer(f):
        f.write(b"half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        files.write_atomic(target, writer)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.onnx"]


def test_several_files_are_written_together(tmp_path):
    paths = files.write_all_atomic({tmp_path / "a.npy": b"a", tmp_path / "b.npy": lambda f: f.write(b"b")})
    assert [p.read_bytes() for p in paths] == [b"a", b"b"]
    with pytest.raises(ZeroDivisionError):
        files.write_all_atomic({tmp_path / "c.npy": b"c", tmp_path / "d.npy": lambda f: 1 / 0})
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "b.npy"]  # neither c nor d


def run_python(code: str, *args) -> subprocess.CompletedProcess:
    """A child Python that imports only helpers.files (no torch: it starts in well under a second)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_sigterm_while_writing_leaves_nothing_partial(tmp_path):
    target = tmp_path / "scn.onnx"
    target.write_bytes(b"old")
    done = run_python("""
        import os, signal, sys
        from helpers import files
        def writer(f):
            f.write(b"x" * 1000)
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill` or a closing Jupyter kernel would
            f.write(b"y" * 1000)
        files.write_atomic(sys.argv[1], writer)
        print("survived")
        """, target)
    assert done.returncode == -signal.SIGTERM and "survived" not in done.stdout, done.stderr
    assert os.listdir(tmp_path) == ["scn.onnx"] and target.read_bytes() == b"old"


def test_sigterm_runs_the_handler_that_was_there_before(tmp_path):
    done = run_python("""
        import os, signal, sys
        from helpers import files
        signal.signal(signal.SIGTERM, lambda *a: print("own handler") or sys.exit(7))
        files.write_atomic(sys.argv[1], lambda f: os.kill(os.getpid(), signal.SIGTERM))
        """, tmp_path / "a.onnx")
    assert done.returncode == 7 and "own handler" in done.stdout and os.listdir(tmp_path) == []


def test_temporary_folders_do_not_outlive_the_process(tmp_path):
    for ending in ["pass", "os.kill(os.getpid(), signal.SIGTERM)", "raise SystemExit(3)"]:
        done = run_python(f"""
            import os, signal, sys
            from helpers import files
            folder = files.temporary_folder(prefix="scn-", dir=sys.argv[1])
            (folder / "model.onnx").write_bytes(b"x")
            print(folder, flush=True)
            {ending}
            """, tmp_path)
        assert done.stdout.strip(), done.stderr
        assert os.listdir(tmp_path) == [], (ending, done.stderr)


def test_temporary_folder_as_a_context(tmp_path):
    with files.temporary_folder(dir=tmp_path) as folder:
        (folder / "x").write_text("x")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- path checks
def test_input_checks(tmp_path):
    with pytest.raises(WorkbookError, match="--points .*missing.bin.*not found"):
        files.check_input(tmp_path / "missing.bin", "--points")
    (tmp_path / "d.bin").mkdir()
    with pytest.raises(WorkbookError, match="d.bin.*folder"):
        files.check_input(tmp_path / "d.bin", "--points")
    (tmp_path / "ok.bin").write_bytes(b"1234")
    assert files.check_input(tmp_path / "ok.bin", "--points") == tmp_path / "ok.bin"


def test_output_checks(tmp_path):
    inputs = {"--points": tmp_path / "scan.npy"}
    inputs["--points"].write_bytes(b"x")
    with pytest.raises(WorkbookError, match="--out .*scan.npy.*--points"):
        files.check_output_file(tmp_path / "scan.npy", "--out", inputs)
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(WorkbookError, match="dir.onnx.*folder"):
        files.check_output_file(tmp_path / "dir.onnx", "--out", inputs)
    with pytest.raises(WorkbookError, match="--save-tensors .*holds .*scan.npy"):
        files.check_output_folder(tmp_path, "--save-tensors", inputs)
    (tmp_path / "file").write_text("x")
    with pytest.raises(WorkbookError, match="--save-tensors .*file.*not a folder"):
        files.check_output_folder(tmp_path / "file", "--save-tensors", inputs)
    files.check_output_file(tmp_path / "new" / "deeper" / "a.onnx", "--out", inputs)  # creatable: fine
    files.check_output_folder(tmp_path / "t", "--save-tensors", inputs)
    assert sorted(os.listdir(tmp_path)) == ["dir.onnx", "file", "scan.npy"]  # checks write nothing
