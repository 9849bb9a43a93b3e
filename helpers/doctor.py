"""What this machine gives the workbook: Python, torch and its CUDA, spconv, the GPU and its driver, and what
the workbook will use (the device and the precision of the trace).

    python -m helpers.doctor        (`make doctor`): one line per finding, then what the workbook will use
    from helpers.doctor import one_line; print(one_line())     the same in one line (each notebook's first cell)
"""
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import List, Optional

# The oldest NVIDIA driver each CUDA major version of a torch build runs on (NVIDIA's CUDA release notes).
MIN_DRIVER = {11: 450, 12: 525, 13: 580}


@dataclass
class Findings:
    python: str                  # "3.11.7"
    torch: str                   # "2.13.0+cpu", or "not installed"
    torch_cuda: Optional[str]    # the CUDA version torch was built with, None for a CPU build
    spconv: str                  # "2.3.8", or why it does not load
    gpu: Optional[str]           # "NVIDIA H100 80GB HBM3 (sm_90), driver 580.65", or None
    device: str                  # what the workbook will use: "cuda" or "cpu"
    dtype: str                   # the trace's precision there: "fp16" on a GPU, "fp32" on the CPU
    problems: List[str] = field(default_factory=list)  # each with its fix


def nvidia_smi_gpu() -> Optional[tuple]:
    """(name, driver, compute capability) of the first GPU nvidia-smi lists, or None."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    fields = [f.strip() for f in out.splitlines()[0].split(",")] if out else []
    return tuple(fields) if len(fields) == 3 else None


def find() -> Findings:
    problems = []
    try:
        import torch
    except ImportError:
        return Findings(platform.python_version(), "not installed", None, "not checked", None, "none", "none",
                        ["torch does not import: run `make install` (or see README, Install)"])
    torch_cuda = torch.version.cuda
    try:
        import spconv.pytorch  # noqa: F401 (loads spconv's compiled kernels)
        spconv_version = metadata.version("spconv-cu118")
    except Exception as error:  # an import of compiled code can fail in many ways; say which
        spconv_version = f"does not load ({type(error).__name__}: {error})"
        problems.append("spconv does not load: reinstall with `make install`")
    smi = nvidia_smi_gpu()
    usable = torch.cuda.is_available()
    gpu = None
    if usable:
        major, minor = torch.cuda.get_device_capability(0)
        gpu = f"{torch.cuda.get_device_name(0)} (sm_{major}{minor})" + (f", driver {smi[1]}" if smi else "")
    elif smi:
        gpu = f"{smi[0]} (sm_{smi[2].replace('.', '')}), driver {smi[1]}, not usable by this torch"
        if torch_cuda is None:
            problems.append("torch is a CPU build but there is an NVIDIA GPU: `make install TORCH=cuda` "
                            "(or TORCH=system with a CUDA torch of your own)")
        else:
            need = MIN_DRIVER.get(int(torch_cuda.split(".")[0]))
            have = int(smi[1].split(".")[0]) if smi[1].split(".")[0].isdigit() else None
            if need and have is not None and have < need:
                problems.append(f"torch {torch.__version__} is built for CUDA {torch_cuda}, which needs an NVIDIA "
                                f"driver >= {need}; this one is {smi[1]}: update the driver, or use TORCH=system "
                                f"with a torch built for an older CUDA")
    device = "cuda" if usable else "cpu"
    return Findings(platform.python_version(), torch.__version__, torch_cuda, spconv_version, gpu, device,
                    "fp16" if device == "cuda" else "fp32", problems)


def torch_build(f: Findings) -> str:
    return "CPU build" if f.torch_cuda is None else f"CUDA {f.torch_cuda} build"


def use(f: Findings) -> str:
    if f.device == "cuda":
        return f"the workbook traces on the GPU in {f.dtype}"
    return f"the workbook runs on the CPU in {f.dtype}"


def one_line(f: Optional[Findings] = None) -> str:
    f = f or find()
    gpu = f.gpu or "no GPU"
    line = (f"Python {f.python} · torch {f.torch} ({torch_build(f)}) · spconv {f.spconv} · {gpu} "
            f"-> {use(f)}")
    return line + "".join(f"\n  problem: {p}" for p in f.problems)


def report(f: Findings) -> str:
    rows = [("Python", f"{f.python} ({sys.executable})"),
            ("torch", f"{f.torch} ({torch_build(f)})"),
            ("spconv-cu118", f.spconv),
            ("GPU", f.gpu or "none seen (nvidia-smi and torch)"),
            ("workbook", use(f))]
    text = "\n".join(f"{name:<13} {value}" for name, value in rows)
    return text + "".join(f"\nproblem:      {p}" for p in f.problems)


def main() -> int:
    findings = find()
    print(report(findings))
    return 1 if findings.problems else 0


if __name__ == "__main__":
    sys.exit(main())
