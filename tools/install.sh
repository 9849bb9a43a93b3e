#!/usr/bin/env bash
# Create the virtual environment and install the workbook into it: torch by the rule below, everything
# else from requirements.lock (pinned, with hashes), then the project itself (editable), then `doctor`.
# `make install` runs it; `make run` and `make test` run it once, when .venv is missing or a lock changed.
#
#   TORCH=auto    (default; unset keeps the rule .venv was installed with) TORCH=cuda when nvidia-smi lists an
#                 NVIDIA GPU, else TORCH=cpu
#   TORCH=cpu     torch 2.13.0+cpu, PyTorch's CPU build (about 190 MB). A wheel pip already has at hand (its
#                 find-links) is taken first; else it comes from TORCH_CPU_INDEX (PyTorch's CPU index, or a
#                 mirror of it). Where neither has it, PyPI's build is installed instead, with a note: about
#                 2.7 GB with its nvidia-* wheels, and it runs on the CPU too.
#   TORCH=cuda    torch 2.13.0 from PyPI, a CUDA 13 build, with its nvidia-* wheels (requirements-torch-cuda.lock,
#                 hashes); its GPU code needs an NVIDIA driver >= 580.
#   TORCH=system  keep the torch that $PYTHON already imports (NVIDIA's PyTorch container, a conda environment):
#                 the venv sees $PYTHON's packages (after its own), torch is not installed again, the rest comes
#                 from the lock.
#
#   PYTHON=python3.12 VENV=.venv TORCH=auto TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu tools/install.sh
#   tools/install.sh --plan      # print the plan (the torch rule's choice and each pip command); change nothing
# pip's own settings (index-url for a mirror, find-links, proxy) apply to every pip command here.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
PY=$VENV/bin/python
STAMP=$VENV/.installed  # what was installed: python=, torch= (the rule), source=
# Unset TORCH keeps the rule the venv was installed with (so `make doctor` after `make install TORCH=system` does
# not re-decide), else auto.
if [ -z "${TORCH:-}" ]; then
  TORCH=$(sed -n 's/^torch=//p' "$STAMP" 2>/dev/null || true)
  TORCH=${TORCH:-auto}
fi
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
PLAN=0
[ "${1:-}" = "--plan" ] && PLAN=1

fail() { echo "install: $*" >&2; exit 2; }
note() { echo "install: $*"; }
run() {  # run a command, or with --plan only print it
  echo "+ $*"
  [ "$PLAN" = 1 ] || "$@"
}

# 1. A Python the pinned packages exist for: spconv-cu118 2.3.8 and cumm-cu118 0.7.11 have wheels for 3.10-3.13.
command -v "$PYTHON" >/dev/null || fail "PYTHON=$PYTHON was not found; set PYTHON to a Python 3.10-3.13 (e.g. PYTHON=python3.12)"
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$version" in
  3.10|3.11|3.12|3.13) ;;
  *) fail "$PYTHON is Python $version; the pinned packages (spconv-cu118 2.3.8) exist for Python 3.10-3.13: set PYTHON=python3.12 (or another of them)";;
esac
[ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] || \
  fail "this is $(uname -s) $(uname -m); spconv-cu118 2.3.8 has wheels for Linux x86-64 only: use a Linux x86-64 machine or container"

# 2. The torch rule.
has_gpu() { command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; }
case "$TORCH" in
  auto) if has_gpu; then mode=cuda; why="nvidia-smi lists an NVIDIA GPU"; else mode=cpu; why="no NVIDIA GPU seen (nvidia-smi)"; fi;;
  cpu|cuda|system) mode=$TORCH; why="TORCH=$TORCH";;
  *) fail "TORCH=$TORCH is not one of auto, cpu, cuda, system";;
esac
torch_release=$("$PYTHON" tools/locks.py torch-version)
note "Python $version ($PYTHON); torch: $mode ($why)"
if [ "$mode" = system ]; then
  have=$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null) || \
    fail "TORCH=system: $PYTHON cannot import torch; install torch for it first, or use TORCH=auto"
  note "TORCH=system: keeping torch $have of $PYTHON"
fi

# 3. The venv. For TORCH=system it also sees $PYTHON's own packages, through a .pth file that lists $PYTHON's
#    site-packages folders after the venv's own (the lock's versions come first; torch is found there). This works
#    where `venv --system-site-packages` does not: when $PYTHON is itself a venv (NVIDIA's containers, pipx, uv).
#    A venv made for another Python or the other rule is made anew (it is ours: .venv holds nothing else).
SYSTEM_PTH=system-python.pth
if [ -x "$PY" ]; then
  had_system=$(ls "$VENV"/lib/python*/site-packages/$SYSTEM_PTH >/dev/null 2>&1 && echo true || echo false)
  want_system=$([ "$mode" = system ] && echo true || echo false)
  same_python=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)
  if [ "$had_system" != "$want_system" ] || [ "$same_python" != "$version" ]; then
    note "$VENV was made for another Python or torch rule: making it anew"
    run rm -rf "$VENV"
  fi
fi
if [ ! -x "$PY" ] || [ "$PLAN" = 1 ]; then
  run "$PYTHON" -m venv "$VENV"
fi
if [ "$mode" = system ]; then
  if [ "$PLAN" = 1 ]; then
    echo "+ list $PYTHON's site-packages in $VENV/lib/python$version/site-packages/$SYSTEM_PTH"
  else
    site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$PYTHON" -c 'import site, sys; print("\n".join(p for p in site.getsitepackages() + [site.getusersitepackages()]))' \
      > "$site/$SYSTEM_PTH"
  fi
fi
# A pip that reads the locks' environment markers and hashes (no network when it is new enough already).
run "$PY" -m pip install -q "pip>=23.1"

# 4. torch.
pip_quiet=(-m pip install -q --no-deps)
cpu_index_reachable() {
  "$PYTHON" - "$TORCH_CPU_INDEX" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=15).close()
except Exception as error:
    print(f"install: {sys.argv[1]} cannot be reached ({type(error).__name__}: {error})")
    sys.exit(1)
EOF
}
source=""
case "$mode" in
  cuda) run "$PY" "${pip_quiet[@]}" --require-hashes -r requirements-torch-cuda.lock; source="PyPI (CUDA 13 build)";;
  system) source="$PYTHON's own";;
  cpu)
    if [ "$PLAN" = 1 ]; then
      echo "+ $PY ${pip_quiet[*]} --no-index torch==$torch_release+cpu   (a wheel at hand, else:)"
      echo "+ $PY ${pip_quiet[*]} --index-url $TORCH_CPU_INDEX torch==$torch_release+cpu   (else:)"
      echo "+ $PY ${pip_quiet[*]} --require-hashes -r requirements-torch-cuda.lock"
    elif "$PY" "${pip_quiet[@]}" --no-index "torch==$torch_release+cpu" 2>/dev/null; then
      source="a wheel at hand (pip's find-links)"
    elif cpu_index_reachable; then
      "$PY" "${pip_quiet[@]}" --index-url "$TORCH_CPU_INDEX" "torch==$torch_release+cpu"
      source="$TORCH_CPU_INDEX"
    else
      note "PyTorch's CPU build is not at hand; installing PyPI's torch $torch_release instead: a CUDA 13 build of" \
           "about 2.7 GB with its nvidia-* wheels, which runs on the CPU too (TORCH_CPU_INDEX=<a mirror> avoids it)"
      "$PY" "${pip_quiet[@]}" --require-hashes -r requirements-torch-cuda.lock
      source="PyPI (CUDA 13 build, CPU index unreachable)"
    fi;;
esac

# 5. Everything else, pinned with hashes; then the project, editable.
run "$PY" -m pip install -q --require-hashes -r requirements.lock
run "$PY" -m pip install -q --no-deps --no-build-isolation -e .
[ "$PLAN" = 1 ] && exit 0
printf 'python=%s\ntorch=%s\nsource=%s\n' "$version" "$mode" "$source" > "$STAMP"
"$PY" -m helpers.doctor
