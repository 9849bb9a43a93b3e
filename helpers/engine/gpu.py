"""Is there an NVIDIA GPU here, and which one: asked of the driver's nvidia-smi, without CUDA or torch.

    find_gpu()  -> Gpu(name, driver, compute_capability="9.0")    or a WorkbookError (exit 2) without one

The runner asks CUDA again (cudaGetDeviceCount) before it builds anything, for a driver that lists a
GPU that CUDA cannot use.
"""
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from helpers.errors import WorkbookError

NO_GPU = "no NVIDIA GPU here ({why}); NVIDIA's engine needs one: run this on a machine with an NVIDIA GPU " \
         "and its driver"


@dataclass
class Gpu:
    name: str                # e.g. "NVIDIA H100 80GB HBM3"
    driver: str              # the driver's version, e.g. "570.86.15"
    compute_capability: str  # e.g. "9.0" (sm_90)


def find_gpu() -> Gpu:
    """The first GPU nvidia-smi lists, with its compute capability."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        why = "the driver is loaded but nvidia-smi is missing" if Path("/proc/driver/nvidia").exists() \
            else "no nvidia-smi, no /proc/driver/nvidia"
        raise WorkbookError(NO_GPU.format(why=why))
    try:
        done = subprocess.run([smi, "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise WorkbookError(NO_GPU.format(why=f"nvidia-smi failed: {type(err).__name__}")) from None
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise WorkbookError(NO_GPU.format(why=f"nvidia-smi: {said[0] if said else 'no GPU listed'}"))
    name, driver, capability = (value.strip() for value in lines[0].rsplit(",", 2))
    return Gpu(name=name, driver=driver, compute_capability=capability)
