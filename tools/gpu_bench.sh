#!/usr/bin/env bash
# GPU figures for docs/BENCHMARKS.md, in one command (about 3-4 minutes on an H200):
#
#     . .device/remote-setup.sh && bash tools/gpu_bench.sh
#
# 1. python -m helpers.bench, fp16, default scene: forward / traced / export, and calibration on
#    1, 8 and 32 scans fitted into a fixed part and a per-scan part (also the full scene, and the real
#    nuScenes scan when ../shared/data holds it);
# 2. the command line's start-up: python -m helpers.export (default scene, 4 calibration scans) against a
#    bare `import torch, spconv.pytorch`, and where its time goes.
# Writes JSON (one object per file) and the printed tables to $OUT (default: build/gpu_bench).
# Afterwards, on the workstation: python tools/plot_calibration.py docs/bench/*.json <OUT>/bench_default.json
set -u
OUT="${OUT:-build/gpu_bench}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT/gpu_bench.txt"
: > "$LOG"
START=$SECONDS

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep going if it fails
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" | tee -a "$LOG"
  timeout "$limit" "$@" 2>"$OUT/$name.stderr" > "$OUT/$name.out"
  local code=$?
  grep '^{' "$OUT/$name.out" | tail -n 1 > "$OUT/$name.json" || rm -f "$OUT/$name.json"
  [ "$code" -eq 0 ] || echo "   ($name exited $code after the limit of $limit s or an error; see $OUT/$name.stderr)" | tee -a "$LOG"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c "import torch, spconv; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'spconv', spconv.__version__)"
  nproc; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt" | tee -a "$LOG"

BENCH=(-m helpers.bench --device cuda --dtype fp16 --repeat 20 --warmup 5 --calib-scans 1 8 32 --calib-repeat 3)
step bench_default 120 "$PY" "${BENCH[@]}" --scene default --json
step bench_full 120 "$PY" "${BENCH[@]}" --scene full --json
REAL=../shared/data/nuscenes_10sweeps_points.bin
[ -f "$REAL" ] || REAL=shared/data/nuscenes_10sweeps_points.bin
if [ -f "$REAL" ]; then
  step bench_nuscenes 120 "$PY" "${BENCH[@]}" --points "$REAL" --json
fi
step startup 150 "$PY" -m helpers.bench --startup --device cuda --startup-repeat 3 --json

"$PY" - "$OUT" <<'EOF' | tee -a "$LOG"
import json, sys
from pathlib import Path
from helpers.bench import startup_table, table
out = Path(sys.argv[1])
for name in ("bench_default", "bench_full", "bench_nuscenes", "startup"):
    path = out / f"{name}.json"
    if path.exists():
        figures = json.loads(path.read_text())
        print(startup_table(figures) if name == "startup" else table(figures))
EOF
echo "gpu_bench.sh: $((SECONDS - START)) s; files in $OUT" | tee -a "$LOG"
