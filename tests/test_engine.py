"""python -m helpers.engine on a machine without a GPU: finding libspconv and its GPU code, building the
runner against it (compiled and linked for real), and every failure as one line with exit code 2.

NVIDIA's libspconv is read from SCN_LIBSPCONV, ../shared/engine/3DSparseConvolution or .gpu-data/; the
build needs g++, protoc, libprotobuf-dev (tools/install-system-deps.sh) and libcudart.so.12 (make engine-deps).
Where the GPU is needed, a stand-in nvidia-smi says what the test wants; the engine itself runs in
tests/test_gpu_engine.py.
"""
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers.engine import build, library as lib
from helpers.engine.results import describe_run, engine_status, meets_target, show_saved
from helpers.errors import WorkbookError
from tests.conftest import ROOT


def engine_folder() -> Path:
    for candidate in [os.environ.get("SCN_LIBSPCONV"), ROOT.parent / "shared" / "engine" / "3DSparseConvolution",
                      ROOT / ".gpu-data" / "3DSparseConvolution"]:
        if candidate and Path(candidate).exists():
            return lib.find_library(candidate).so_file.parents[3]
    pytest.skip("NVIDIA's 3DSparseConvolution folder is not here (set SCN_LIBSPCONV)")


@pytest.fixture(scope="module")
def engine():
    return engine_folder()


@pytest.fixture(scope="module")
def tools():
    try:
        return build.find_toolchain()
    except WorkbookError as err:
        pytest.skip(f"cannot build the runner here: {err}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The command line's working folder for this module: one build/engine cache, one export."""
    return tmp_path_factory.mktemp("engine")


def fake_smi(folder: Path, line: str) -> Path:
    """A folder holding an nvidia-smi that prints `line` (name, driver, compute capability)."""
    folder.mkdir(parents=True, exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{line}'\n")
    smi.chmod(0o755)
    return folder


def cli(args, cwd, path_first=None, path=None):
    """Run python -m helpers.engine; (exit code, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + sys.path[1:]))
    env["PATH"] = path if path is not None else os.pathsep.join(str(p) for p in [path_first, env.get("PATH")] if p)
    env.pop("SCN_LIBSPCONV", None)
    done = subprocess.run([sys.executable, "-m", "helpers.engine", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout, done.stderr


def one_line_error(code, err, *words):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]


# ----------------------------------------------------------------------------- the library
def cuda_elf_archs(so_file) -> set:
    """An independent reading: the sm_XX in the e_flags of each CUDA ELF (e_machine 190) inside the .so."""
    data = Path(so_file).read_bytes()
    found, start = set(), data.find(b"\x7fELF", 1)
    while start >= 0:
        machine, = struct.unpack_from("<H", data, start + 18)
        if machine == 190:
            flags, = struct.unpack_from("<I", data, start + 48)
            found.add(flags & 0xFF)
        start = data.find(b"\x7fELF", start + 4)
    return found


def test_library_from_so_folder_and_checkout(engine, tmp_path):
    so_file = next((engine / "libspconv" / "lib").glob("*/libspconv.so"))
    checkout = tmp_path / "Lidar_AI_Solution" / "libraries"
    checkout.mkdir(parents=True)
    (checkout / "3DSparseConvolution").symlink_to(engine)
    for given in [so_file, engine, engine.parent, tmp_path / "Lidar_AI_Solution"]:
        found = lib.find_library(given)
        assert found.so_file.resolve() == so_file.resolve(), given
        assert found.parser.name == "onnx-parser.cpp" and (found.include / "spconv" / "engine.hpp").is_file()
        assert {p.name for p in found.protos} >= {"onnx-ml.proto"}


def test_gpu_archs_agree_with_the_cuda_elf_headers(engine):
    so_file = lib.find_library(engine).so_file
    archs = lib.gpu_archs(so_file)
    assert archs.sass == cuda_elf_archs(so_file) and archs.sass  # 80, 86, 90 for libspconv 1.1.10 x86_64_cuda12.6
    assert 90 in archs.sass and lib.runs_on(archs, "9.0")


@pytest.mark.parametrize("sass, ptx, capability, expected", [
    ({90}, set(), "9.0", True), ({80}, set(), "8.9", True), ({86}, set(), "8.0", False),
    ({80, 86, 90}, set(), "10.0", False), ({80, 86, 90}, set(), "7.5", False), ({90}, {80}, "12.0", True),
    (set(), {90}, "8.6", False)])
def test_runs_on_follows_cuda_compatibility(sass, ptx, capability, expected):
    assert lib.runs_on(lib.Archs(sass=sass, ptx=ptx), capability) is expected


def copy_engine(engine: Path, target: Path, so_bytes: bytes = None) -> Path:
    """A 3DSparseConvolution folder with the sources, and the given bytes (or the real ones) as the .so."""
    shutil.copytree(engine, target, ignore=shutil.ignore_patterns("*.so"))
    so_file = lib.find_library(engine).so_file
    copied = target / so_file.relative_to(engine)
    copied.write_bytes(so_file.read_bytes() if so_bytes is None else so_bytes)
    return copied


def test_git_lfs_pointer_is_said(engine, tmp_path, workdir):
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 3697592\n"
    copy_engine(engine, tmp_path / "3DSparseConvolution", pointer)
    code, _, err = cli(["--build-only", "--libspconv", tmp_path / "3DSparseConvolution"], workdir)
    one_line_error(code, err, "git-lfs pointer", "git lfs pull")


def test_missing_paths_are_said(engine, workdir):
    code, _, err = cli([ROOT / "README.md", "--tensors", "t", "--libspconv", workdir / "nowhere"], workdir)
    one_line_error(code, err, "nowhere", "does not exist")
    code, _, err = cli([ROOT / "README.md", "--tensors", "t"], workdir)
    one_line_error(code, err, "SCN_LIBSPCONV")
    code, _, err = cli([workdir / "missing.onnx", "--tensors", "t", "--libspconv", engine], workdir)
    one_line_error(code, err, "missing.onnx")
    code, _, err = cli(["--build-only", "--libspconv", engine.parent.parent], workdir)
    one_line_error(code, err, "libspconv.so")


# ----------------------------------------------------------------------------- the build
def test_runner_compiles_and_links_against_libspconv(engine, tools, workdir):
    library = lib.find_library(engine)
    cache = workdir / "build" / "engine"
    runner = build.build_runner(library, tools, cache=cache, quiet=True)
    needed = subprocess.run(["readelf", "-d", str(runner)], capture_output=True, text=True).stdout
    assert "libspconv.so" in needed and "libcudart.so.12" in needed and "libprotobuf" not in needed  # static
    linked = subprocess.run(["ldd", str(runner)], capture_output=True, text=True).stdout
    assert "not found" not in linked, linked  # the rpath finds libspconv and libcudart
    # the cache: the same inputs give the same runner without a new build
    before = runner.stat().st_mtime_ns
    assert build.build_runner(library, tools, cache=cache, quiet=True) == runner
    assert runner.stat().st_mtime_ns == before
    # it runs here, up to what needs a GPU: a usage line, a file its parser cannot read, then CUDA itself
    done = subprocess.run([str(runner)], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr
    garbage = workdir / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07 not an onnx file at all \xff\xff")
    args = ["int8", "v", "c", "1", "5", "1", "1", "1", "1", "o"]
    done = subprocess.run([str(runner), str(garbage), *args], capture_output=True, text=True)
    assert done.returncode == 2 and "parser cannot read" in done.stderr, done.stderr
    if shutil.which("nvidia-smi") is None:
        onnx_file = make_tiny_onnx(workdir)
        done = subprocess.run([str(runner), str(onnx_file), *args], capture_output=True, text=True)
        assert done.returncode == 2 and "no CUDA GPU" in done.stderr, done.stderr


def make_tiny_onnx(folder: Path) -> Path:
    """A one-node ONNX file: enough for the runner to read before it asks CUDA for a GPU."""
    import onnx
    from onnx import helper
    node = helper.make_node("Relu", ["0"], ["1"], name="relu0")
    graph = helper.make_graph([node], "tiny", [helper.make_tensor_value_info("0", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("1", onnx.TensorProto.FLOAT, [1])])
    path = folder / "tiny.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_cache_key_follows_the_library(engine, tools, tmp_path):
    copied = copy_engine(engine, tmp_path / "3DSparseConvolution")
    first = build.cache_key(lib.find_library(copied), tools)
    assert build.cache_key(lib.find_library(copied), tools) == first
    os.utime(copied, ns=(copied.stat().st_atime_ns, copied.stat().st_mtime_ns + 10**9))
    assert build.cache_key(lib.find_library(copied), tools) != first


def test_portable_runner_carries_its_cuda_runtime(engine, tools, workdir):
    code, out, err = cli(["--build-only", "--out-dir", workdir / "carry", "--libspconv", engine], workdir)
    assert code == 0, err
    runner = workdir / "carry" / "runner"
    assert (workdir / "carry" / "libcudart.so.12").is_file() and os.access(runner, os.X_OK)
    assert "$ORIGIN" in subprocess.run(["readelf", "-d", str(runner)], capture_output=True, text=True).stdout


def test_no_compiler_is_said_with_what_to_install(engine, tmp_path, workdir):
    code, _, err = cli(["--build-only", "--libspconv", engine], workdir, path=str(tmp_path))  # a PATH with neither g++ nor protoc
    one_line_error(code, err, "g++", "protoc", "apt-get install g++ protobuf-compiler libprotobuf-dev")


# ----------------------------------------------------------------------------- the run, up to the GPU
@pytest.fixture(scope="module")
def exported(workdir):
    """A small export and its tensors (float and fake-quant outputs)."""
    from helpers.export import main as export
    out = workdir / "scn.onnx"
    assert export(["--scene", "small", "--calibrate", "1", "--quiet", "--out", str(out),
                   "--save-tensors", str(workdir / "tensors")]) == 0
    return out, workdir / "tensors"


def test_no_gpu_is_said(engine, tools, exported, workdir):
    if shutil.which("nvidia-smi") or Path("/proc/driver/nvidia").exists():
        pytest.skip("this machine has an NVIDIA driver")
    onnx_file, tensors = exported
    code, _, err = cli([onnx_file, "--tensors", tensors, "--libspconv", engine], workdir)
    one_line_error(code, err, "no NVIDIA GPU")


def test_library_for_another_gpu_is_said(engine, tools, exported, workdir, tmp_path):
    onnx_file, tensors = exported
    smi = fake_smi(tmp_path / "bin", "NVIDIA Future GPU, 999.01, 12.0")
    code, _, err = cli([onnx_file, "--tensors", tensors, "--libspconv", engine], workdir, path_first=smi)
    one_line_error(code, err, "sm_120", "sm_90", "this GPU (NVIDIA Future GPU)")


def test_runner_without_cuda_device_is_one_line(engine, tools, exported, workdir, tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has a GPU: tests/test_gpu_engine.py runs the engine")
    onnx_file, tensors = exported
    smi = fake_smi(tmp_path / "bin", "NVIDIA H100 80GB HBM3, 570.00, 9.0")  # the driver says yes, CUDA says no
    code, out, err = cli([onnx_file, "--tensors", tensors, "--libspconv", engine], workdir, path_first=smi)
    one_line_error(code, err, "no CUDA GPU")
    assert (workdir / "build" / "engine").is_dir()  # built on the way, in the working folder's build/


STAND_IN = """\
#!{python}
# A stand-in for the runner: checks what it is given, answers as the runner does
import sys
import numpy as np
model, precision, voxels, coords, n, c, g0, g1, g2, repeat, output = sys.argv[1:]
tensors = "{tensors}"
expected = np.load(tensors + "/voxels.npy")
assert (np.fromfile(voxels, np.float16).reshape(int(n), int(c)) == expected).all(), "voxels"
assert (np.fromfile(coords, np.int32).reshape(int(n), 4) == np.load(tensors + "/coors.npy")).all(), "coords"
assert [g0, g1, g2] == ["1440", "1440", "41"], "grid"
{crash}
out = np.load(tensors + "/output_int8.npy").astype(np.float16)
out.tofile(output)
print("\\x1b[33m[Verb]\\x1b[0m Forward[conv0:Float16] SubmanifoldSparseConvolution")
print("\\x1b[33m[Verb]\\x1b[0m Forward[conv1:Int8] SubmanifoldSparseConvolution")
print("\\x1b[33m[Verb]\\x1b[0m Forward[fused_add0_relu0:Int8] Add")
print("runner: output Float16 " + ",".join(map(str, out.shape)))
for i in range(int(repeat)):
    print("runner: ms %.4f" % (1.0 + i))
"""


def stand_in(folder: Path, tensors: Path, crash: str = "") -> Path:
    script = folder / "runner"
    script.write_text(STAND_IN.format(python=sys.executable, tensors=tensors, crash=crash))
    script.chmod(0o755)
    return script


def cosine(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_the_runner_output_is_read_compared_and_timed(engine, exported, workdir, tmp_path):
    """With a stand-in runner that returns the fake-quant output in fp16: the figures the command line prints
    against numpy's, the layer precisions, the median and the JSON."""
    onnx_file, tensors = exported
    smi = fake_smi(tmp_path / "bin", "NVIDIA H100 80GB HBM3, 570.00, 9.0")
    runner = stand_in(tmp_path, tensors)
    saved = tmp_path / "run.json"
    code, out, err = cli([onnx_file, "--tensors", tensors, "--libspconv", engine, "--runner", runner,
                          "--repeat", "5", "--save-json", saved, "--label", "small scene"], workdir, path_first=smi)
    fake_quant = np.load(tensors / "output_int8.npy")
    engine_out = fake_quant.astype(np.float16).astype(np.float32)
    to_float = cosine(np.load(tensors / "output.npy"), engine_out)
    assert to_float < 0.99999  # int8 costs something: fp16's target (vs float) is missed, so exit code 1
    assert code == 1, err
    result = __import__("json").loads(saved.read_text())
    int8, fp16 = result["runs"]
    assert int8["precision"] == "int8" and fp16["precision"] == "fp16"
    assert abs(int8["cosine"]["float"] - to_float) < 1e-9
    assert abs(int8["cosine"]["fake-quant"] - cosine(fake_quant, engine_out)) < 1e-9
    assert int8["max_abs"]["fake-quant"] == pytest.approx(float(np.abs(fake_quant - engine_out).max()))
    assert int8["ms"] == 3.0 and int8["ms_all"] == [1.0, 2.0, 3.0, 4.0, 5.0]  # the median of the five
    assert int8["layers"] == [["conv0", "Float16"], ["conv1", "Int8"], ["fused_add0_relu0", "Int8"]]
    assert result["machine"]["compute_capability"] == "9.0" and result["label"] == "small scene"
    assert "target fake-quant >= 0.9999: met" in out and "target float >= 0.99999: NOT met" in out
    assert describe_run(result)[1].startswith("  int8: cosine")


def test_a_crash_of_the_engine_is_one_line(engine, exported, workdir, tmp_path):
    onnx_file, tensors = exported
    smi = fake_smi(tmp_path / "bin", "NVIDIA H100 80GB HBM3, 570.00, 9.0")
    crash = textwrap.dedent(f"""\
        import os
        print("Assert failed. something inside the engine", file=sys.stderr, flush=True)
        os.kill(os.getpid(), {int(signal.SIGSEGV)})""")
    runner = stand_in(tmp_path, tensors, crash)
    code, _, err = cli([onnx_file, "--tensors", tensors, "--libspconv", engine, "--runner", runner,
                        "--precision", "int8"], workdir, path_first=smi)
    one_line_error(code, err, "crashed (SIGSEGV)", "Assert failed")


def test_without_saved_runs_the_notebook_says_so(tmp_path, capsys):
    assert show_saved(tmp_path) == []
    assert "No saved run of NVIDIA's engine" in capsys.readouterr().out


def test_saved_runs_are_shown_and_checked(tmp_path, capsys):
    run = {"precision": "int8", "cosine": {"float": 0.99990, "fake-quant": 0.99995}, "max_abs": {},
           "ms": 1.2, "ms_all": [1.1, 1.2, 1.3], "layers": [["conv0", "Float16"], ["conv1", "Int8"]]}
    saved = {"label": "key frame", "file": "scn.onnx", "voxels": 17509, "date": "2026-12-01T00:00:00+00:00",
             "machine": {"gpu": "GPU X", "driver": "1.0", "compute_capability": "9.0"},
             "libspconv": "lib/x86_64_cuda12.6/libspconv.so", "libspconv_archs": "sm_90", "runs": [run]}
    (tmp_path / "a.json").write_text(__import__("json").dumps(saved))
    assert show_saved(tmp_path) == [saved]
    out = capsys.readouterr().out
    assert "key frame: 17,509 voxels, GPU X" in out and "1 Float16, 1 Int8" in out and "0.999950 vs fake-quant" in out
    assert meets_target(run)
    assert not meets_target(dict(run, cosine={"float": 0.9999, "fake-quant": 0.99989}))
    assert not meets_target(dict(run, precision="fp16"))  # fp16 is held to 0.99999 against float


def test_engine_status_needs_a_gpu_and_scn_libspconv(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_smi(tmp_path / "bin", "NVIDIA H100 80GB HBM3, 570.00, 9.0")))
    monkeypatch.delenv("SCN_LIBSPCONV", raising=False)
    status = engine_status()
    assert not status.can_run and "SCN_LIBSPCONV is not set" in status.why and "H100" in status.why
    monkeypatch.setenv("SCN_LIBSPCONV", str(tmp_path))
    assert engine_status().can_run
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no nvidia-smi
    if not Path("/proc/driver/nvidia").exists():
        assert "no NVIDIA GPU" in engine_status().why and not engine_status().can_run
