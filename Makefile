# Two commands do everything: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lab bench export notebooks student slides web-assets system-deps engine-deps engine-runner lock clean

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is needed; set PYTHON=python3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

## run: export build/scn.onnx from the built-in synthetic scene, then execute the notebooks into build/
run: export notebooks

export: $(STAMP)
	$(PY) -m helpers.export --out build/scn.onnx --save-tensors build/tensors

notebooks: $(STAMP)
	$(PY) tools/execute_notebooks.py --out build

## student: the student edition of the notebooks (solutions replaced by stubs) in build/student/
student: $(STAMP)
	$(PY) tools/editions.py --out build/student

## slides: reveal.js slides of the notebooks, build/slides/0N_*.slides.html, that need no network
slides: $(STAMP) web-assets
	$(PY) tools/build_slides.py

## web-assets: the pinned npm packages (reveal.js, require.js, MathJax, widget manager) the pages load, cached once
web-assets: $(STAMP)
	$(PY) tools/web_assets.py fetch

## test: every test, notebooks and the browser test included
test: $(STAMP) system-deps engine-deps web-assets
	$(PY) -m pytest

## lab: JupyterLab on notebooks/
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

## bench: speed and memory figures (see docs/BENCHMARKS.md)
bench: $(STAMP)
	$(PY) -m helpers.bench

## system-deps: Chromium and a Chinese font for the browser tests (installed with apt-get when we are root)
system-deps:
	@bash tools/install-system-deps.sh

## engine-deps: what python -m helpers.engine builds with: g++, protoc, libprotobuf (system-deps) and the CUDA 12 runtime
engine-deps: $(STAMP) system-deps
	$(PY) -m pip install -q nvidia-cuda-runtime-cu12==12.9.79

## engine-runner: a runner to carry to a GPU machine without g++ or protoc (LIBSPCONV: NVIDIA's 3DSparseConvolution)
LIBSPCONV ?= ../shared/engine/3DSparseConvolution
engine-runner: engine-deps
	$(PY) -m helpers.engine --build-only --out-dir .gpu-data/runner --libspconv $(LIBSPCONV)

## lock: regenerate requirements.lock (uv, with hashes) and environment.yml from pyproject.toml; see tools/lock.sh
lock:
	bash tools/lock.sh

clean:
	rm -rf build
