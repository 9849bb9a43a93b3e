"""Notebook 03's section on NVIDIA's engine: run the notebook's file in it here, or show a saved real run.

    status = engine_status()              can it run here? (a GPU, and $SCN_LIBSPCONV naming libspconv)
    runs = run_here(onnx_path, reference) when it can: int8 and fp16, printed as the command line prints them
    saved = show_saved(folder)            when it cannot: the JSON files of `python -m helpers.engine
                                          --save-json` in docs/engine/ (machine, date, figures), or says none
    meets_target(saved[0]["runs"][0])     a saved build reached its target (fp16 vs float, int8 vs fake-quant)
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List

from helpers.engine.gpu import find_gpu
from helpers.engine.run import TARGETS, run_engine, set_up
from helpers.errors import WorkbookError

SAVED = Path(__file__).resolve().parents[2] / "docs" / "engine"  # docs/engine/*.json, from real GPU runs

GET_LIBSPCONV = """\
libspconv is NVIDIA's, not part of the workbook. To get it:
  git clone https://github.com/NVIDIA-AI-IOT/Lidar_AI_Solution && cd Lidar_AI_Solution
  git lfs install && git lfs pull --include "libraries/3DSparseConvolution/**"   # the .so files are git-lfs objects
  export SCN_LIBSPCONV=$PWD                                                      # then restart the kernel
Its builds sit in libraries/3DSparseConvolution/libspconv/lib/<folder>/libspconv.so; the repository's history
has the folders x86_64_cuda11.4, x86_64_cuda12.6, aarch64_cuda11.4, aarch64_cuda12.8 and aarch64_cuda13.0
(and older x86_64, aarch64). The workbook's runner needs a CUDA 12 build for your CPU: on x86-64 that is
x86_64_cuda12.6 (libspconv 1.1.10), whose fat binaries carry GPU code for sm_80, sm_86 and sm_90 and no PTX:
by CUDA's rule it runs on compute capability 8.x and 9.0 (A100, RTX 30xx / 40xx, H100, H200...), not on newer
GPUs; it was measured on H100 and H200. For another build, python -m helpers.engine reads the sm_XX of the
.so you give it and says whether your GPU is among them."""


@dataclass
class Status:
    can_run: bool  # a GPU and $SCN_LIBSPCONV: run_here works
    why: str       # what is there, or what is missing


def engine_status() -> Status:
    """Whether the engine can run here: $SCN_LIBSPCONV is set and nvidia-smi lists a GPU."""
    libspconv = os.environ.get("SCN_LIBSPCONV")
    try:
        gpu = find_gpu()
    except WorkbookError as err:
        return Status(False, str(err))
    if not libspconv:
        return Status(False, f"a GPU is here ({gpu.name}), but $SCN_LIBSPCONV is not set")
    return Status(True, f"{gpu.name} (compute capability {gpu.compute_capability}), libspconv from {libspconv}")


def run_here(onnx_path, reference, repeat: int = 50) -> List:
    """Build (once) and run the engine on the file, in int8 and fp16; print each run's line and return the runs."""
    setup = set_up(os.environ["SCN_LIBSPCONV"])
    print(f"libspconv {setup.library.so_file} ({setup.archs}) on {setup.gpu.name}")
    runs = [run_engine(setup.runner, setup.library, onnx_path, reference, p, repeat=repeat) for p in ("int8", "fp16")]
    for run in runs:
        print(run.line())
    return runs


def meets_target(saved_run: dict) -> bool:
    """Whether one saved build (an entry of "runs") reached its target (run.TARGETS)."""
    against, least = TARGETS[saved_run["precision"]]
    return saved_run["cosine"][against] >= least


def describe_run(saved: dict) -> List[str]:
    """The lines of one saved JSON file: scan, machine, date, then one line per build precision."""
    machine = saved["machine"]
    lines = [f"{saved.get('label') or saved['file']}: {saved['voxels']:,} voxels, {machine['gpu']} (driver "
             f"{machine['driver']}), {saved['date']}, {Path(saved['libspconv']).parent.name} ({saved['libspconv_archs']})"]
    for run in saved["runs"]:
        counts = {}
        for _, precision in run["layers"]:
            counts[precision] = counts.get(precision, 0) + 1
        layers = ", ".join(f"{n} {p}" for p, n in counts.items())
        lines.append(f"  {run['precision']}: cosine {run['cosine']['float']:.6f} vs float PyTorch, "
                     f"{run['cosine']['fake-quant']:.6f} vs fake-quant; {run['ms']:.3f} ms per forward "
                     f"(median of {len(run['ms_all'])}); layers: {layers}")
    return lines


def show_saved(folder=SAVED) -> List[dict]:
    """Print the saved real runs in `folder` (or say plainly that there is none) and return them."""
    paths = sorted(Path(folder).glob("*.json"))
    if not paths:
        shown = folder.relative_to(SAVED.parents[1]) if Path(folder) == SAVED else folder  # docs/engine
        print(f"No saved run of NVIDIA's engine is in {shown} yet: no figures to show. They come from a real GPU "
              "run: python -m helpers.engine FILE --tensors DIR --libspconv PATH --save-json docs/engine/NAME.json")
        return []
    saved = [json.loads(path.read_text()) for path in paths]
    for one in saved:
        print("\n".join(describe_run(one)))
    return saved
