"""A property-based test of the command line's contract (issue 11), with Hypothesis.

Hypothesis generates point files (.bin / .npy, honest or lying headers, odd values), checkpoints
(good or broken) and option combinations, runs `helpers.export.main(argv)` in this process, and checks:
    exit 0: the graph is written and checked (contract + re-run), nothing else appeared but what was asked;
    exit 2: ONE line on stderr, and nothing at all was written;
and in both cases the inputs are unchanged, no temporary file is left, and memory stays bounded.
Every example is counted by what it was and how it was handled; the table is printed at the end
(`pytest -s tests/test_hostile_property.py`).
"""
import functools
import hashlib
import io
import os
import resource
import stat
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from helpers.config import get_config
from helpers.data.scene import make_scene
from helpers.export import main
from helpers.model import build_scn

MEMORY_BOUND_MB = 4096  # the pytest process, high-water mark: the CLI on these inputs needs well under 2 GB
TALLY: Counter = Counter()  # (input kind, how it was handled) -> examples


@functools.lru_cache(maxsize=None)
def real_scan() -> np.ndarray:
    return make_scene("small")[:2000]  # [2000, 5] rows of a real-looking scan


@functools.lru_cache(maxsize=None)
def state_dict() -> dict:
    return build_scn(get_config("bevfusion-01")).state_dict()


@pytest.fixture(scope="module", autouse=True)
def print_tally():
    yield
    width = max((len(k) for k, _ in TALLY), default=10)
    print(f"\n{'input':<{width}}  {'handled as':<48} examples")
    for (kind, outcome), n in sorted(TALLY.items()):
        print(f"{kind:<{width}}  {outcome:<48} {n}")
    print(f"{'total':<{width}}  {'':<48} {sum(TALLY.values())}")


# ----------------------------------------------------------------------------- strategies
floats = st.one_of(st.floats(-60, 60, width=32), st.sampled_from([0.0, np.nan, np.inf, -np.inf, 1e-40, -3e-42,
                                                                    1e30, 255.0]))


@st.composite
def points_files(draw, hostile: bool):
    """(kind, suffix, spec): an honest scan, or odd values, a lying .npy header or plain garbage."""
    kind = draw(st.sampled_from(["values", "values", "header", "header", "garbage"])) if hostile else "scan"
    suffix = draw(st.sampled_from([".npy", ".bin"]))
    if kind == "scan":  # a slice of a real scan: 4 or 5 columns, any float width in a .npy
        rows, cols = draw(st.integers(1, 300)), draw(st.sampled_from([5, 5, 4]))
        dtype = np.float32 if suffix == ".bin" else draw(st.sampled_from([np.float32, np.float64, np.float16]))
        spec = ("real", draw(st.integers(0, 1000)), rows, cols, dtype)
    elif kind == "values":  # a few rows of arbitrary floats (NaN, Inf, denormals, far away)
        rows, cols = draw(st.integers(0, 6)), draw(st.sampled_from([5, 4, 3]))
        spec = np.array(draw(st.lists(floats, min_size=rows * cols, max_size=rows * cols)),
                        np.float32).reshape(rows, cols)
    elif kind == "header":  # a .npy whose header may lie about its size, shape or type
        suffix = ".npy"
        shape = draw(st.one_of(st.tuples(st.integers(0, 10**12), st.integers(0, 7)),
                               st.tuples(st.integers(0, 50)), st.tuples(st.integers(0, 9), st.just(5), st.just(1))))
        descr = draw(st.sampled_from(["<f4", "<f8", "<i4", "|O", "<f2", ">f4", "|b1"]))
        spec = ("header", shape, descr, draw(st.sampled_from(["exact", "short", "long", "none"])), draw(st.booleans()))
    else:
        spec = draw(st.binary(max_size=64))
    return kind, suffix, spec


def materialize(spec, real_points, folder: Path) -> Path:
    kind, suffix, array = spec
    path = folder / f"scan{suffix}"
    if kind == "scan":
        _, start, rows, cols, dtype = array
        array = real_points[start:start + rows, :cols].astype(dtype)
    if kind == "header":
        _, shape, descr, payload, fortran = array
        f = io.BytesIO()
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": fortran, "shape": shape})
        size = int(np.prod(shape)) * np.dtype(descr).itemsize if descr != "|O" else 8 * int(np.prod(shape))
        size = min(size, 4000)  # never write a big file, whatever the header says
        extra = {"exact": size, "short": size // 2, "long": size + 20, "none": 0}[payload]
        body = real_points.astype(np.dtype(descr) if descr != "|O" else np.float64).tobytes()[:extra]
        path.write_bytes(f.getvalue() + body.ljust(extra, b"\0"))
    elif isinstance(array, bytes):
        path.write_bytes(array)
    elif suffix == ".npy":
        np.save(path, array)
    else:
        array.astype(np.float32).tofile(path)
    return path


GOOD_CHECKPOINTS, BAD_CHECKPOINTS = ["none", "good"], ["nan", "sparse", "int-keys", "truncated", "garbage", "list"]


def make_checkpoint(kind, state, folder: Path, name="weights.pth"):
    if kind == "none":
        return None
    path = folder / name
    state = dict(state)
    if kind == "nan":
        state["conv_out.0.weight"] = torch.full_like(state["conv_out.0.weight"], float("nan"))
    elif kind == "sparse":
        state["conv_input.0.weight"] = state["conv_input.0.weight"].to_sparse()
    elif kind == "int-keys":
        state = dict(enumerate(state.values()))
    elif kind == "list":
        state = [1, 2, 3]
    if kind == "garbage":
        path.write_bytes(b"PK\x03\x04 not really a zip")
    else:
        torch.save(state, path)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:3000])
    return path


GOOD_OUTS, BAD_OUTS = ["new", "nested", "existing"], ["folder", "checkpoint", "points-link", "not-onnx", "under-a-file"]
GOOD_TENSORS, BAD_TENSORS = ["none", "new"], ["a-file", "inputs-folder", "same-as-out"]


TENSOR_FILES = ("voxels.npy", "coors.npy", "output.npy", "output_int8.npy", "node_stats.npz",
                "manifest.json")  # --save-tensors


def snapshot(folder: Path) -> dict:
    """Every path under the folder with its bytes' hash and mode."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                         stat.S_IMODE(p.lstat().st_mode)) for p in folder.rglob("*")}


def check_one_example(tmp_path_factory, capsys, hostile, data):
    """Draw one example with one hostile part (or none), run the CLI on it and check the contract."""
    real_points, good_state = real_scan(), state_dict()
    points = data.draw(points_files(hostile == "points"), "points")
    checkpoint = data.draw(st.sampled_from(BAD_CHECKPOINTS if hostile == "checkpoint" else GOOD_CHECKPOINTS))
    out = data.draw(st.sampled_from(BAD_OUTS if hostile == "out" else GOOD_OUTS), "out")
    if out == "checkpoint":
        checkpoint = "good"  # named weights.onnx below: --out may only be refused for being the input
    tensors = data.draw(st.sampled_from(BAD_TENSORS if hostile == "tensors" else GOOD_TENSORS), "tensors")
    layout = data.draw(st.sampled_from(["xyz", "zyx"]), "layout")
    dtype = data.draw(st.sampled_from([None, "fp32", "fp16"]), "dtype")
    columns = 4 if points[1] == ".bin" and points[0] == "scan" and points[2][3] == 4 else None
    calibrate = 1
    if hostile == "options":
        option = data.draw(st.sampled_from(["calibrate", "columns"]), "option")
        if option == "calibrate":
            calibrate = data.draw(st.one_of(st.integers(-10**7, 0), st.integers(65, 10**9)), "calibrate")
        else:
            columns = data.draw(st.sampled_from([3, 4, 5, 6]), "columns")
    folder = tmp_path_factory.mktemp("ex")
    inputs = folder / "in"
    inputs.mkdir()
    scan = materialize(points, real_points, inputs)
    ckpt = make_checkpoint(checkpoint, good_state, inputs, "weights.onnx" if out == "checkpoint" else "weights.pth")
    out_path = {"new": folder / "scn.onnx", "nested": folder / "build" / "x" / "scn.onnx",
                "existing": folder / "old.onnx", "folder": folder / "dir.onnx", "checkpoint": ckpt,
                "points-link": folder / "link.onnx", "not-onnx": folder / "scn.txt",
                "under-a-file": folder / "plain" / "scn.onnx"}[out]
    if out == "existing":
        out_path.write_bytes(b"old")
        out_path.chmod(0o640)
    if out == "folder":
        out_path.mkdir()
    if out == "points-link":
        out_path.symlink_to(scan)
    if out == "under-a-file":
        (folder / "plain").write_text("x")
    argv = ["--grid", "bevfusion-01", "--quiet", "--device", "cpu", "--precision", "fp16", "--points", str(scan),
            "--layout", layout, "--calibrate", str(calibrate), "--out", str(out_path)]
    argv += ["--checkpoint", str(ckpt)] if ckpt else []
    argv += ["--dtype", dtype] if dtype else []
    argv += ["--columns", str(columns)] if columns else []
    tensor_path = {"none": None, "new": folder / "t", "a-file": folder / "t.txt", "inputs-folder": inputs,
                   "same-as-out": out_path}[tensors]
    if tensors == "a-file":
        tensor_path.write_text("x")
    argv += ["--save-tensors", str(tensor_path)] if tensor_path else []
    before = snapshot(folder)

    code = main(argv)
    captured = capsys.readouterr()
    after = snapshot(folder)
    kind = {"points": f"points: {points[0]} {points[1]}", "checkpoint": f"checkpoint: {checkpoint}",
            "out": f"--out: {out}", "tensors": f"--save-tensors: {tensors}",
            "options": f"option: --{option}" if hostile == "options" else "",
            "nothing": f"valid: scan {points[1]}"}[hostile]

    assert code in (0, 2), f"exit {code} for {argv}\n{captured.err[-3000:]}"
    assert not [p for p in after if p.endswith(".tmp")]  # never a temporary file left behind
    for name, value in before.items():  # inputs (and everything else that was there) are unchanged ...
        if not (code == 0 and Path(folder / name) in (out_path, tensor_path and Path(tensor_path) / Path(name).name)):
            assert after.get(name) == value, f"{name} changed: {argv}"
    if code == 2:
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
        assert after == before, f"something was written: {set(after) - set(before)}"
        TALLY[kind, "exit 2: " + reason(lines[0])] += 1
    else:
        assert "contract check: passed" in captured.out and "(agrees)" in captured.out
        assert "DISAGREES" not in captured.out
        expected = {str(out_path.relative_to(folder))} | ({f"{tensor_path.name}/{n}" for n in
                                                           TENSOR_FILES} |
                                                          {tensor_path.name} if tensor_path else set())
        assert set(after) - set(before) <= expected | {str(p.relative_to(folder)) for p in out_path.parents
                                                       if folder in p.parents}
        if out == "existing":
            assert after["old.onnx"][1] == 0o640  # the mode of a replaced file is kept
        TALLY[kind, "exit 0: written and checked"] += 1
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert peak_mb < MEMORY_BOUND_MB, f"peak memory {peak_mb:.0f} MB"


def contract_test(hostile: str, examples: int):
    """A Hypothesis test of `examples` examples whose hostile part is `hostile`."""
    @settings(max_examples=int(os.environ.get("HOSTILE_EXAMPLES", examples)), derandomize=True, deadline=None,
              database=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate])  # no shrinking: a failure is reported as found, quickly
    @given(data=st.data())
    def test(tmp_path_factory, capsys, data):
        check_one_example(tmp_path_factory, capsys, hostile, data)
    test.__doc__ = f"The CLI's contract on {examples} generated examples whose {hostile} is hostile."
    return test


# Bad input is refused before any work (milliseconds); a valid example exports (a second or two).
test_hostile_points = contract_test("points", 40)
test_hostile_checkpoint = contract_test("checkpoint", 12)
test_hostile_out = contract_test("out", 12)
test_hostile_tensors = contract_test("tensors", 10)
test_hostile_options = contract_test("options", 12)
test_valid_inputs = contract_test("nothing", 8)


def reason(line: str) -> str:
    """A short label for an error line: which option or what kind of problem."""
    for key, label in [("--calibrate", "--calibrate out of range"), ("ending in .onnx", "--out not .onnx"),
                       ("--columns", "--columns without a .bin, or not 4/5"),
                       ("is a folder; expected a file", "output is a folder"),
                       ("is the same file as", "output is an input"), (": holds --", "tensors folder holds an input"),
                       ("is a file, not a folder", "a file where a folder must be"),
                       ("is the --out file", "tensors folder is the output"),
                       ("header promises", ".npy size does not match its header"), ("not a .npy", "not a .npy"),
                       ("array of shape", "wrong dtype or shape"), ("not a multiple", ".bin size"),
                       ("zero points", "empty scan"), ("rows contain NaN", "NaN/Inf points"),
                       ("NaN or Inf values", "NaN/Inf weights"), ("denormal", "denormal values"),
                       ("none of the", "no point in range"), ("columns but columns=", "columns mismatch"),
                       ("sparse", "sparse tensor"), ("not parameter names", "checkpoint keys are not names"),
                       ("safely", "not a loadable checkpoint"),
                       ("expected a state dict", "checkpoint not a state dict"),
                       ("not calibrated", "uncalibrated"), ("cannot write", "folder not writable"),
                       ("cannot be read", "unreadable input")]:
        if key in line:
            return label
    return line[7:60]
