#!/usr/bin/env bash
# Regenerate the locks from pyproject.toml (runtime dependencies, the `test` extra) and tools/lock/extra.in
# with uv, with hashes, for every supported Python (3.10-3.13) at once (uv's universal resolution), from the
# public index only, then split them (tools/locks.py) and derive environment.yml (tools/environment_yml.py).
# Every version the locks pin now is kept (uv prefers the pins of the file it writes): a new dependency is
# added at a version that fits and nothing else moves; `UPGRADE=1 tools/lock.sh` lets everything move.
#   tools/lock.sh       # needs uv: .venv/bin/uv once `make install` ran (the test extra pins it), or UV=/path/to/uv
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
[ -x "$UV" ] || UV=uv
INDEX=${INDEX:-https://pypi.org/simple}
all=$(mktemp --suffix=.txt)
trap 'rm -f "$all"' EXIT
[ "${UPGRADE:-0}" = 1 ] || python3 tools/locks.py join > "$all"
"$UV" pip compile --no-config --no-python-downloads --universal --python-version 3.10 \
    pyproject.toml tools/lock/extra.in --extra test --generate-hashes --index-url "$INDEX" \
    --custom-compile-command "tools/lock.sh" --output-file "$all"
python3 tools/locks.py split "$all"
python3 tools/environment_yml.py > environment.yml
