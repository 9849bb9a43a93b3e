#!/usr/bin/env bash
# Regenerate requirements.lock from pyproject.toml (runtime dependencies plus the `test` extra) with uv,
# then environment.yml from the lock. Every version the lock pins now is kept: the lock itself is the
# constraint, so a new dependency is added at a version that fits and nothing else moves.
#   tools/lock.sh                 # needs uv (pip install uv==0.13.8 into any venv; UV=/path/to/uv)
# torch is the CPU build, 2.13.0+cpu, from this machine's wheel folder (/opt/wheels, also on pip's
# find-links here); resolving against it keeps the CUDA-only packages of PyPI's torch out of the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
WHEELS=${WHEELS:-/opt/wheels}
"$UV" pip compile pyproject.toml --extra test --python-version 3.11.7 --python-platform x86_64-manylinux_2_28 \
    --constraint requirements.lock --find-links "$WHEELS" --generate-hashes \
    --custom-compile-command "tools/lock.sh" --output-file requirements.lock.new
mv requirements.lock.new requirements.lock
python3 tools/environment_yml.py > environment.yml
