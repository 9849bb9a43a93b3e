#!/usr/bin/env bash
# NVIDIA's engine on a GPU machine, in one command (a few minutes on an H100 / H200):
#
#     . .device/remote-setup.sh && bash tools/gpu_engine.sh .gpu-data/3DSparseConvolution [DATA_DIR]
#
# Before, on the workstation: make engine-runner (a runner for a machine without g++ / protoc, ~3 MB in
# .gpu-data/runner), copy ../shared/engine/3DSparseConvolution and ../shared/data/nuscenes_10sweeps_points.bin
# into .gpu-data/ (and .gpu-data/data/), and prepare .device/ with
# DEVICE_LITE=1 DEVICE_EXTRA_PACKAGES=pytest bash ../shared/device/prepare.sh; carry .device and .gpu-data.
#
# ENGINE_DIR: NVIDIA's 3DSparseConvolution folder (libspconv.so, headers, the ONNX parser sources), e.g. a
# copy of ../shared/engine/3DSparseConvolution carried in the ignored .gpu-data/. DATA_DIR (default
# .gpu-data/data, else ../shared/data) holds nuscenes_10sweeps_points.bin.
# 1. says which build tools this machine has; builds the runner here if it can, else uses the one built on
#    the workstation with `make engine-runner` (.gpu-data/runner: runner + libcudart.so.12);
# 2. exports the default synthetic scene and the real 10-sweep scan, with their PyTorch outputs;
# 3. runs both in the engine, int8 and fp16: engine_<scan>.json (machine, date, figures) and the printout;
# 4. runs tests/test_gpu_engine.py (the targets).
# The JSON files and the printout go to $OUT (default build/gpu_engine), the exports to $WORK; exit code 0
# when every step passed. Afterwards copy $OUT/engine_*.json to docs/engine/ (notebook 03 shows them).
set -u
ENGINE_DIR="${1:?usage: bash tools/gpu_engine.sh ENGINE_DIR [DATA_DIR]}"
DATA_DIR="${2:-.gpu-data/data}"
[ -d "$DATA_DIR" ] || DATA_DIR=../shared/data
OUT="${OUT:-build/gpu_engine}"
WORK="${WORK:-build/gpu_engine_work}"  # the exports and their tensors (~70 MB a scan): kept out of $OUT
PREBUILT="${PREBUILT:-.gpu-data/runner}"
PY="${PYTHON:-python}"
mkdir -p "$OUT" "$WORK"
FAILED=0
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT/gpu_engine.txt"
: > "$LOG"
START=$SECONDS

say() { echo "$*" | tee -a "$LOG"; }
step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its output, keep going if it fails
  local name=$1 limit=$2
  shift 2
  say "== $name: $*"
  timeout "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.stderr"
  local code=$?
  tail -n 30 "$OUT/$name.out" | tee -a "$LOG"
  [ "$code" -eq 0 ] || { FAILED=1; say "   ($name exited $code; see $OUT/$name.stderr)"; tail -n 5 "$OUT/$name.stderr" | tee -a "$LOG"; }
  return $code
}

# 1. the machine and its tools
say "== machine"
nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader 2>&1 | tee -a "$LOG"
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1 | tee -a "$LOG"
for tool in g++ protoc; do say "$tool: $(command -v $tool || echo 'not found')"; done
say "libprotobuf headers: $([ -f /usr/include/google/protobuf/message.h ] && echo found || echo 'not found')"
say "libcudart.so.12: $("$PY" -c 'from helpers.engine.build import find_cuda_runtime as f; print(f())' 2>&1 | tail -n 1)"
say "prebuilt runner: $([ -x "$PREBUILT/runner" ] && echo "$PREBUILT" || echo 'none')"

RUNNER_ARGS=()
if step build 300 "$PY" -m helpers.engine --build-only --libspconv "$ENGINE_DIR"; then
  say "runner: built on this machine"
elif [ -x "$PREBUILT/runner" ]; then
  FAILED=0  # not building here is expected on a machine without g++ or protoc
  RUNNER_ARGS=(--runner "$PREBUILT")
  export SCN_ENGINE_RUNNER="$PREBUILT"
  say "runner: the prebuilt one in $PREBUILT"
else
  say "no runner: neither built here nor prebuilt (make engine-runner on the workstation); stopping"
  exit 2
fi

# 2. and 3. the two scans, exported then run in the engine in int8 and fp16
run_scan() {  # run_scan NAME LABEL EXPORT-OPTIONS...
  local name=$1 label=$2
  shift 2
  step "export_$name" 180 "$PY" -m helpers.export --quiet --out "$WORK/$name/scn.onnx" --save-tensors "$WORK/$name/tensors" "$@" &&
  step "engine_$name" 180 "$PY" -m helpers.engine "$WORK/$name/scn.onnx" --tensors "$WORK/$name/tensors" \
    --libspconv "$ENGINE_DIR" --precision both --repeat 100 --label "$label" --save-json "$OUT/engine_$name.json" \
    ${RUNNER_ARGS[@]+"${RUNNER_ARGS[@]}"}
}
run_scan default "synthetic default scene"
if [ -f "$DATA_DIR/nuscenes_10sweeps_points.bin" ]; then
  run_scan nuscenes_10sweeps "nuScenes 10 sweeps" --points "$DATA_DIR/nuscenes_10sweeps_points.bin" --columns 5
else
  say "(no $DATA_DIR/nuscenes_10sweeps_points.bin: the real scan is left out)"
fi

# 4. the GPU test (pytest comes with DEVICE_EXTRA_PACKAGES=pytest when .device/ is prepared)
if ! "$PY" -c "import pytest" 2>/dev/null; then
  say "(no pytest here: prepare .device/ with DEVICE_EXTRA_PACKAGES=pytest to run tests/test_gpu_engine.py)"
else
  SCN_LIBSPCONV="$ENGINE_DIR" step pytest 240 "$PY" -m pytest -x -q -s -p no:cacheprovider tests/test_gpu_engine.py
fi
say "gpu_engine.sh: $((SECONDS - START)) s; files in $OUT; $([ $FAILED = 0 ] && echo 'every step passed' || echo 'a step FAILED')"
exit $FAILED
