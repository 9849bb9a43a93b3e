"""Print environment.yml for conda, derived from requirements.lock: the same pins, without the hashes.

    python3 tools/environment_yml.py > environment.yml     (tools/lock.sh runs it after locking)

tests/test_environment.py checks that the committed environment.yml is exactly what this prints.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = """\
name: scn-export-workbook
# Derived from requirements.lock by tools/environment_yml.py (do not edit: run tools/lock.sh).
# conda env create -f environment.yml && conda activate scn-export-workbook && pip install --no-deps -e .
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pip:
"""


def lock_pins(text: str) -> list:
    """(name, version) of every `name==version` line of a pip lock, in the lock's order."""
    return re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", text, re.M)


def environment_yml(lock_text: str) -> str:
    return HEADER + "".join(f"      - {name}=={version}\n" for name, version in lock_pins(lock_text))


if __name__ == "__main__":
    sys.stdout.write(environment_yml((ROOT / "requirements.lock").read_text()))
