# Two commands do everything: `make run` and `make test` (see README.md, Install).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# How torch is installed (tools/install.sh): auto (a CUDA build where nvidia-smi lists a GPU, else the CPU build),
# cpu, cuda, or system (keep the torch $(PYTHON) already has). Unset: the rule .venv was installed with, else auto.
# TORCH_CPU_INDEX: where the CPU build comes from.
TORCH  ?=
export PYTHON VENV TORCH TORCH_CPU_INDEX

.PHONY: run test lab bench export notebooks student slides web-assets system-deps engine-deps engine-runner install \
        doctor lock clean hub hub-deps

$(STAMP): requirements.lock requirements-torch-cuda.lock pyproject.toml tools/install.sh
	bash tools/install.sh

## install: (re)install .venv by the torch rule, e.g. `make install TORCH=system` in NVIDIA's PyTorch container
install:
	bash tools/install.sh

## doctor: what was found (Python, torch and its CUDA, spconv, the GPU and driver) and what the workbook will use
doctor: $(STAMP)
	$(PY) -m helpers.doctor

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
test: $(STAMP) system-deps engine-deps web-assets hub-deps
	$(PY) -m pytest

## lab: JupyterLab on notebooks/
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

## hub-deps: configurable-http-proxy for JupyterHub, pinned by tools/hub/package-lock.json, into build/hub/
hub-deps: build/hub/node_modules/.bin/configurable-http-proxy

build/hub/node_modules/.bin/configurable-http-proxy: tools/hub/package.json tools/hub/package-lock.json
	mkdir -p build/hub && cp tools/hub/package.json tools/hub/package-lock.json build/hub/
	cd build/hub && npm ci --ignore-scripts --no-audit --no-fund

## hub: a JupyterHub class on 127.0.0.1:8000 (jupyterhub_config.py; set SCN_HUB_PASSWORD first: docs/TRAINER.md)
hub: $(STAMP) hub-deps
	$(VENV)/bin/jupyterhub -f jupyterhub_config.py

## bench: speed and memory figures (see docs/BENCHMARKS.md)
bench: $(STAMP)
	$(PY) -m helpers.bench

## system-deps: Chromium and a Chinese font for the browser tests (installed with apt-get when we are root)
system-deps:
	@bash tools/install-system-deps.sh

## engine-deps: what python -m helpers.engine builds with: g++, protoc, libprotobuf (system-deps); the CUDA 12 runtime
## (nvidia-cuda-runtime-cu12) comes with requirements.lock
engine-deps: $(STAMP) system-deps

## engine-runner: a runner to carry to a GPU machine without g++ or protoc (LIBSPCONV: NVIDIA's 3DSparseConvolution)
LIBSPCONV ?= ../shared/engine/3DSparseConvolution
engine-runner: engine-deps
	$(PY) -m helpers.engine --build-only --out-dir .gpu-data/runner --libspconv $(LIBSPCONV)

## lock: regenerate requirements.lock and requirements-torch-cuda.lock (uv, hashes, Python 3.10-3.13) and environment.yml
lock:
	bash tools/lock.sh

clean:
	rm -rf build
