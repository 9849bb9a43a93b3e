"""Run a saved SCN file in NVIDIA's engine, through the runner as a child process, and compare with PyTorch.

    setup = set_up("~/Lidar_AI_Solution")     # libspconv, the tools, the GPU; the runner built once
    result = run_engine(setup.runner, setup.library, "build/scn.onnx", load_reference("build/tensors"), "int8")
    result.cosine["fake-quant"], result.ms, result.layers     # what the engine computed, how fast, in what

The runner gets the voxels and coordinates as raw files and writes the engine's output as one; a crash of
the engine (a segfault, an abort) ends the child, not this process, and becomes a one-line error.
"""
import os
import re
import signal
import statistics
import subprocess
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from helpers.check.agree import Reference, compare
from helpers.check.runtime import check_coords, graph_grid
from helpers.engine.build import build_runner, find_toolchain, runner_in
from helpers.engine.gpu import Gpu, find_gpu
from helpers.engine.library import Archs, Library, check_runs_on, find_library
from helpers.errors import WorkbookError

TARGETS = {"fp16": ("float", 0.99999), "int8": ("fake-quant", 0.9999)}  # precision -> (against, least cosine)
DTYPES = {"Float16": np.float16, "Float32": np.float32}  # the engine's dtype_string -> numpy
ENGINE_ERRORS = ("Assert failed", "CUDA Runtime error", "[Erro")  # the engine's own error lines (not fatal to it)
FORWARD = re.compile(r"Forward\[([^\]:]+):([A-Za-z0-9]+)\]")  # verbose: "Forward[fused_add7_relu7:Int8] Add"
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the engine colours its log
TIMEOUT_S = 600


@dataclass
class EngineRun:
    precision: str                  # the build precision asked for: int8 or fp16
    voxels: int                     # input rows
    output_shape: List[int]         # the engine's output, as it reports it
    cosine: Dict[str, float]        # "float" / "fake-quant" (the PyTorch outputs) -> cosine similarity
    max_abs: Dict[str, float]       # the same pairs -> largest absolute difference
    ms: float                       # one forward, median of the timed repeats
    ms_all: List[float]             # every timed forward
    layers: List[Tuple[str, str]] = field(default_factory=list)  # (fused layer, precision) as the engine prints

    def target(self) -> Tuple[str, float]:
        """(against which PyTorch output, the least cosine) this build should reach."""
        return TARGETS[self.precision]

    def meets_target(self) -> bool:
        against, least = self.target()
        return self.cosine[against] >= least

    def precision_counts(self) -> Dict[str, int]:
        return dict(Counter(precision for _, precision in self.layers))

    def line(self) -> str:
        against, least = self.target()
        counts = ", ".join(f"{n} {p}" for p, n in self.precision_counts().items()) or "none printed"
        return (f"{self.precision}: cosine {self.cosine['float']:.6f} (max abs {self.max_abs['float']:.4g}) vs float "
                f"PyTorch, {self.cosine['fake-quant']:.6f} (max abs {self.max_abs['fake-quant']:.4g}) vs fake-quant; "
                f"target {against} >= {least}: {'met' if self.meets_target() else 'NOT met'}; "
                f"{self.ms:.3f} ms per forward (median of {len(self.ms_all)}); layers: {counts}")

    def to_dict(self) -> dict:
        return asdict(self)


def parse_log(stdout: str) -> Tuple[List[str], List[float], List[Tuple[str, str]]]:
    """The runner's output line (dtype, shape), its timings, and the (layer, precision) of each Forward line."""
    output, timings, layers = [], [], []
    for line in ANSI.sub("", stdout).splitlines():
        if line.startswith("runner: output "):
            output = line.split()[2:]  # [dtype, "1,256,180,180"]
        elif line.startswith("runner: ms "):
            timings.append(float(line.split()[2]))
        elif not timings:  # layers of the first (verbose) forward only
            layers += FORWARD.findall(line)
    return output, timings, layers


def _failure(done: subprocess.CompletedProcess, file) -> str:
    """One line saying why the runner failed: its own error, the engine's, or the signal that ended it."""
    text = ANSI.sub("", done.stderr + "\n" + done.stdout)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    own = [line for line in lines if line.startswith("runner: error")]
    engine = [line for line in lines if any(mark in line for mark in ENGINE_ERRORS)]
    if own:
        return own[0].replace("runner: error ", "")
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        last = engine[0] if engine else (lines[-1] if lines else "no output")
        return f"the engine crashed ({name}) running {file}; its last word: {last}"
    if engine:
        return f"NVIDIA's engine reported an error running {file}: {engine[0]}"
    return ""


def run_engine(runner: Path, library: Library, file, reference: Reference, precision: str,
               repeat: int = 50) -> EngineRun:
    """Build the engine from `file` in `precision`, run it on the reference's voxels, compare and time it."""
    voxels = reference.voxels.half().cpu().numpy()  # [N, C] fp16
    coords = reference.coords.int().cpu().numpy()   # [N, 4] int32, the axes in the graph's order
    check_coords(reference.coords, file)  # e.g. xyz rows for a zyx graph: said before the engine sees them
    grid, _ = graph_grid(file)  # the engine's grid size: the first conv's input_spatial_shape, graph's axis order
    env = dict(os.environ)  # libspconv's folder and the runner's (a carried libcudart.so.12) for the loader
    env["LD_LIBRARY_PATH"] = ":".join([str(library.so_file.parent.resolve()), str(Path(runner).parent.resolve()),
                                       env.get("LD_LIBRARY_PATH", "")])
    with tempfile.TemporaryDirectory(prefix="scn-engine-") as work:
        work = Path(work)
        voxels.tofile(work / "voxels.f16")
        coords.tofile(work / "coords.i32")
        command = [str(runner), str(file), precision, str(work / "voxels.f16"), str(work / "coords.i32"),
                   str(len(voxels)), str(voxels.shape[1]), *map(str, grid), str(repeat), str(work / "output.raw")]
        try:
            done = subprocess.run(command, capture_output=True, text=True, errors="replace", env=env,
                                  timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise WorkbookError(f"the engine did not finish {file} in {TIMEOUT_S} s; is the GPU busy?") from None
        why = _failure(done, file)
        if done.returncode != 0 or why:
            raise WorkbookError(why or f"the runner exited {done.returncode} on {file} without a message")
        output, timings, layers = parse_log(done.stdout)
        if len(output) != 2 or output[0] not in DTYPES or not timings:
            raise WorkbookError(f"the runner's output for {file} is incomplete (output {output}, {len(timings)} "
                                "timings); run it again")
        shape = [int(v) for v in output[1].split(",")]
        engine_out = np.fromfile(work / "output.raw", dtype=DTYPES[output[0]])
    expected = reference.output.numel()
    if engine_out.size != expected:
        raise WorkbookError(f"{file}: the engine's output has {engine_out.size} values {shape}, PyTorch's "
                            f"{expected} {list(reference.output.shape)}; was the file exported with these tensors?")
    candidate = torch.from_numpy(engine_out.astype(np.float32)).reshape(reference.output.shape)
    figures = {"float": compare(reference.output.float(), candidate),
               "fake-quant": compare(reference.output_int8.float(), candidate)}
    return EngineRun(precision=precision, voxels=len(voxels), output_shape=shape,
                     cosine={k: float(v["cosine"]) for k, v in figures.items()},
                     max_abs={k: float(v["max_abs"]) for k, v in figures.items()},
                     ms=statistics.median(timings), ms_all=timings, layers=[tuple(x) for x in layers])


@dataclass
class Setup:
    library: Library  # libspconv and its sources
    gpu: Gpu          # the GPU it runs on
    archs: Archs      # the GPU code the library carries (one of them runs on this GPU)
    runner: Path      # the executable


def set_up(libspconv, runner=None, quiet: bool = False) -> Setup:
    """Everything before a run, in the order that says the most useful error first: the library (a real
    .so, not a git-lfs pointer), the build tools, the GPU, the library's code for that GPU, then the build."""
    library = find_library(libspconv)
    tools = None if runner else find_toolchain()  # what to install is said on any machine, GPU or not
    gpu = find_gpu()
    archs = check_runs_on(library.so_file, gpu.name, gpu.compute_capability)
    executable = runner_in(runner) if runner else build_runner(library, tools, quiet=quiet)
    return Setup(library=library, gpu=gpu, archs=archs, runner=executable)
