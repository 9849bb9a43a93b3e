"""The install: the locks are generated (with hashes) and split right, they install for every supported Python,
environment.yml is derived from them, tools/install.sh applies the torch rule, doctor says what it found, and
the installed packages are the pinned ones."""
import importlib.util
import os
import re
import socket
import stat
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker

from tests.conftest import ROOT


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


environment_yml = load_tool("environment_yml")
locks = load_tool("locks")
BASE = (ROOT / "requirements.lock").read_text()
TORCH_CUDA = (ROOT / "requirements-torch-cuda.lock").read_text()
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
INDEX = "https://pypi.org/simple"


def pins_here(text: str) -> dict:
    """name -> version of the lock's entries whose environment marker holds for this interpreter."""
    pins = {}
    for entry in locks.entries(text):
        line = entry.splitlines()[0].rstrip(" \\")
        requirement, _, marker = line.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate():
            continue
        name, version = requirement.strip().split("==")
        assert name.lower() not in pins, f"{name} is pinned twice for this Python"
        pins[name.lower().replace("_", "-")] = version
    return pins


def test_environment_yml_is_derived_from_the_locks():
    assert (ROOT / "environment.yml").read_text() == environment_yml.environment_yml(TORCH_CUDA), \
        "environment.yml is out of date: run tools/lock.sh (or python3 tools/environment_yml.py > environment.yml)"
    assert "pytorch>=2.11,<=2.13.0" in (ROOT / "environment.yml").read_text()


def test_every_pin_has_a_hash():
    for text in (BASE, TORCH_CUDA):
        for entry in locks.entries(text):
            assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), f"no hash for {entry.splitlines()[0]}"
    assert len(locks.entries(BASE)) >= 150 and len(locks.entries(TORCH_CUDA)) >= 15


def test_the_locks_are_split_at_torch():
    base = {locks.name_of(e) for e in locks.entries(BASE)}
    torch_stack = {locks.name_of(e) for e in locks.entries(TORCH_CUDA)}
    assert base & torch_stack == set()
    assert "torch" in torch_stack and {n for n in torch_stack if n.startswith("nvidia-")}
    assert not {n for n in base if locks.is_torch_stack(n)}, "requirements.lock must not pin torch or its CUDA stack"
    assert locks.torch_version(TORCH_CUDA) == "2.13.0"
    # torch's own pure-Python dependencies stay in the base lock: the CPU build and TORCH=system need them too
    assert {"sympy", "networkx", "jinja2", "filelock", "fsspec", "typing-extensions"} <= base


def test_required_pins():
    pins = pins_here(BASE)
    assert pins["spconv-cu118"] == "2.3.8" and pins["cumm-cu118"] == "0.7.11"
    assert pins["pytorch-quantization"] == "2.1.3"
    assert pins["jupyter-server-proxy"] == "4.6.0"
    for name in ["onnx", "onnxruntime", "netron", "ipywidgets", "matplotlib", "jupyterlab", "nbclient", "tqdm",
                 "simpervisor", "pytest", "playwright", "hypothesis", "uv", "setuptools", "jupyterhub"]:
        assert name in pins, f"{name} is not pinned in requirements.lock for this Python"


def test_test_only_packages_are_not_runtime_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {re.split(r"[<>=\[ ;]", d)[0].lower() for d in project["dependencies"]}
    assert {"pytest", "playwright", "hypothesis"} & runtime == set()
    assert {re.split(r"[<>=\[ ]", d)[0].lower() for d in project["optional-dependencies"]["test"]} == \
        {"pytest", "playwright", "hypothesis", "jupyterhub"}  # jupyterhub: tests/test_hub.py
    pinned = set(pins_here(BASE)) | set(pins_here(TORCH_CUDA))
    assert runtime <= pinned, f"runtime dependencies missing from the locks: {runtime - pinned}: run tools/lock.sh"
    assert project["requires-python"] == ">=3.10,<3.14"


def test_installed_versions_are_the_pinned_ones():
    for name, version in pins_here(BASE).items():
        if name in ("pip", "uv", "setuptools"):
            continue
        if name in {"appnope", "colorama", "pywinpty", "pyreadline3"}:  # other systems' packages
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name}=={version} is locked but not installed: run `make install`")
        assert installed == version, f"{name}: installed {installed}, locked {version}"
    assert metadata.version("torch").split("+")[0] == locks.torch_version(TORCH_CUDA)


# The locks resolve for every supported Python, from the public index alone (no local wheel folder, no pip
# configuration): uv picks the wheels a Linux x86-64 machine of each Python would install, checking the hashes'
# files exist, without installing anything.

def public_index_reachable(url: str) -> bool:
    host = re.match(r"https?://([^/:]+)", url).group(1)
    try:
        socket.create_connection((host, 443), timeout=10).close()
        return True
    except OSError:
        return False


def uv_dry_run(python: str, *requirements: str, index: str = INDEX) -> subprocess.CompletedProcess:
    uv = Path(sys.executable).with_name("uv")
    if not uv.exists():
        pytest.skip("uv is not installed in this environment (the test extra pins it: make install)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    return subprocess.run([str(uv), "pip", "install", "--no-config", "--no-python-downloads", "--dry-run",
                           "--python-version", python, "--python-platform", "x86_64-manylinux_2_28",
                           "--target", "/nonexistent-target", "--only-binary", ":all:", "--index-url", index,
                           *requirements], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


@pytest.mark.network
@pytest.mark.parametrize("python", PYTHONS)
def test_the_locks_install_on_each_python_from_the_public_index(python):
    if not public_index_reachable(INDEX):
        pytest.skip(f"{INDEX} cannot be reached from this machine")
    for files in (["requirements.lock"], ["requirements.lock", "requirements-torch-cuda.lock"]):
        args = ["--require-hashes"] + [a for f in files for a in ("-r", f)]
        result = uv_dry_run(python, *args)
        assert result.returncode == 0, f"Python {python}, {files}: {result.stderr[-2000:]}"
        counts = re.search(r"Would install (\d+) packages", result.stderr)
        assert counts and int(counts.group(1)) >= 140, result.stderr[-500:]
        if "requirements-torch-cuda.lock" in files:
            assert re.search(r"^ \+ torch==2\.13\.0$", result.stderr, re.M), result.stderr[-2000:]


@pytest.mark.network
def test_python_3_14_is_refused_by_the_locks_with_the_reason():
    if not public_index_reachable(INDEX):
        pytest.skip(f"{INDEX} cannot be reached from this machine")
    result = uv_dry_run("3.14", "--require-hashes", "-r", "requirements.lock")
    assert result.returncode != 0 and "cp314" in result.stderr


@pytest.mark.network
@pytest.mark.parametrize("python", PYTHONS)
def test_the_cpu_build_of_torch_resolves_on_each_python(python):
    index = "https://download.pytorch.org/whl/cpu"
    if not public_index_reachable(index):
        pytest.skip(f"PyTorch's CPU index ({index}) cannot be reached from this machine")
    result = uv_dry_run(python, "--no-deps", f"torch=={locks.torch_version(TORCH_CUDA)}+cpu", index=index)
    assert result.returncode == 0, result.stderr[-2000:]


# tools/install.sh: the torch rule, read from its --plan (it changes nothing then).

def plan(tmp_path, path_dirs=(), **env_vars) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH", "VENV", "PYTHON")}
    env["PATH"] = os.pathsep.join([*map(str, path_dirs), "/usr/bin", "/bin"])
    env["VENV"] = str(tmp_path / "venv")
    env.update(env_vars)
    return subprocess.run(["bash", "tools/install.sh", "--plan"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=60)


def fake_nvidia_smi(folder: Path) -> Path:
    folder.mkdir()
    tool = folder / "nvidia-smi"
    tool.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0000)'\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return folder


def test_install_plan_without_a_gpu_takes_the_cpu_build(tmp_path):
    result = plan(tmp_path, PYTHON=sys.executable, TORCH="auto")
    assert result.returncode == 0, result.stderr
    assert "torch: cpu (no NVIDIA GPU seen" in result.stdout
    assert "--no-index torch==2.13.0+cpu" in result.stdout
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu" in result.stdout
    assert "--require-hashes -r requirements.lock" in result.stdout


def test_install_plan_with_a_gpu_takes_the_cuda_lock(tmp_path):
    result = plan(tmp_path, [fake_nvidia_smi(tmp_path / "bin")], PYTHON=sys.executable, TORCH="auto")
    assert result.returncode == 0, result.stderr
    assert "torch: cuda (nvidia-smi lists an NVIDIA GPU)" in result.stdout
    assert "--require-hashes -r requirements-torch-cuda.lock" in result.stdout
    assert "torch==2.13.0+cpu" not in result.stdout


def test_install_plan_system_keeps_the_pythons_torch(tmp_path):
    result = plan(tmp_path, PYTHON=sys.executable, TORCH="system")
    assert result.returncode == 0, result.stderr
    assert f"keeping torch {metadata.version('torch')}" in result.stdout
    assert "site-packages in" in result.stdout and "system-python.pth" in result.stdout
    assert "torch==" not in result.stdout and "requirements-torch-cuda.lock" not in result.stdout


@pytest.mark.parametrize("env_vars, message", [
    ({"TORCH": "rocm"}, "TORCH=rocm is not one of auto, cpu, cuda, system"),
    ({"PYTHON": "python3.99"}, "PYTHON=python3.99 was not found"),
    ({"TORCH": "system", "PYTHON": "/usr/bin/python3"}, "cannot import torch"),
])
def test_install_refuses_bad_settings_in_one_line(tmp_path, env_vars, message):
    if env_vars.get("PYTHON") == "/usr/bin/python3":
        probe = subprocess.run(["/usr/bin/python3", "-c", "import torch"], capture_output=True)
        if probe.returncode == 0:
            pytest.skip("/usr/bin/python3 imports torch on this machine")
    result = plan(tmp_path, **{"PYTHON": sys.executable, **env_vars})
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "venv").exists()


# doctor: what it reports is what torch and spconv say, and a driver too old for torch's CUDA is named.

def test_doctor_reports_this_machine():
    import torch
    result = subprocess.run([sys.executable, "-m", "helpers.doctor"], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert f"torch         {torch.__version__}" in result.stdout
    assert f"spconv-cu118  {metadata.version('spconv-cu118')}" in result.stdout
    device = "GPU" if torch.cuda.is_available() else "CPU"
    assert f"the workbook {'traces on the GPU in fp16' if device == 'GPU' else 'runs on the CPU in fp32'}" \
        in result.stdout
    assert result.returncode == (1 if "problem:" in result.stdout else 0)


def test_doctor_names_a_driver_too_old_for_torchs_cuda(monkeypatch):
    import torch
    from helpers import doctor
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(doctor, "nvidia_smi_gpu", lambda: ("NVIDIA H100 80GB HBM3", "535.104.05", "9.0"))
    findings = doctor.find()
    assert findings.device == "cpu" and findings.dtype == "fp32"
    assert findings.gpu.startswith("NVIDIA H100 80GB HBM3 (sm_90), driver 535.104.05")
    assert len(findings.problems) == 1 and "driver >= 580" in findings.problems[0] \
        and "535.104.05" in findings.problems[0]
    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU build beside a GPU: say how to get a CUDA build
    assert "TORCH=cuda" in doctor.find().problems[0]


def test_install_without_torch_set_keeps_the_rule_the_venv_was_installed_with(tmp_path):
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / ".installed").write_text("python=3.11\ntorch=system\nsource=x\n")
    result = plan(tmp_path, PYTHON=sys.executable)  # TORCH unset, as in `make doctor` after `make install TORCH=system`
    assert result.returncode == 0, result.stderr
    assert "torch: system (TORCH=system)" in result.stdout
    (tmp_path / "venv" / ".installed").unlink()
    assert "torch: cpu (no NVIDIA GPU seen" in plan(tmp_path, PYTHON=sys.executable).stdout
