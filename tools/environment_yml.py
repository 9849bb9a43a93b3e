"""Print environment.yml for conda: Python, pip and PyTorch from conda-forge, whose solver takes the CUDA build
of pytorch where the machine has an NVIDIA driver and the CPU build elsewhere (the workbook's torch rule); the
rest is then installed from requirements.lock by `make install TORCH=system`, hash-checked like everywhere else.

    python3 tools/environment_yml.py > environment.yml     (tools/lock.sh runs it after locking)

tests/test_environment.py checks that the committed environment.yml is exactly what this prints.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = """\
name: scn-export-workbook
# Made by tools/environment_yml.py (do not edit: run tools/lock.sh). Python, pip and PyTorch come from conda-forge,
# which takes its CUDA build of pytorch where an NVIDIA driver is present and its CPU build elsewhere; every other
# package comes from requirements.lock, pinned and hash-checked, in a venv that sees this environment's torch:
#   conda env create -f environment.yml && conda activate scn-export-workbook
#   make install TORCH=system PYTHON=python && make run
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pytorch>={oldest},<={newest}  # {newest} is the locked release; {oldest} the oldest the workbook was run with
"""
# torch releases the workbook's tests passed with: the lock's, and the GPU machine's own (CUDA 13 build).
OLDEST_TESTED_TORCH = "2.11"


def lock_pins(text: str) -> list:
    """(name, version) of every `name==version` line of a pip lock, in the lock's order."""
    return re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", text, re.M)


def environment_yml(torch_lock_text: str) -> str:
    torch = {version for name, version in lock_pins(torch_lock_text) if name == "torch"}
    assert len(torch) == 1, f"requirements-torch-cuda.lock pins torch {sorted(torch)}; expected one release"
    return TEMPLATE.replace("{oldest}", OLDEST_TESTED_TORCH).replace("{newest}", torch.pop())


if __name__ == "__main__":
    sys.stdout.write(environment_yml((ROOT / "requirements-torch-cuda.lock").read_text()))
