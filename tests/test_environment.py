"""The pins: requirements.lock, environment.yml and the installed packages agree."""
import re
from importlib import metadata

from tests.conftest import ROOT


def lock_pins():
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version.strip()
    return pins


def test_environment_yml_matches_the_lock():
    pins = lock_pins()
    conda = dict(re.findall(r"^\s+- ([A-Za-z0-9_.-]+)==(\S+)$", (ROOT / "environment.yml").read_text(), re.M))
    assert len(conda) >= 15
    for name, version in conda.items():
        assert pins.get(name.lower()) == version, f"environment.yml pins {name}=={version}, lock has {pins.get(name)}"


def test_required_pins():
    pins = lock_pins()
    assert pins["torch"] == "2.13.0"
    assert pins["spconv-cu118"] == "2.3.8"
    assert pins["pytorch-quantization"] == "2.1.3"
    for name in ["onnx", "onnxruntime", "netron", "ipywidgets", "matplotlib", "jupyterlab", "nbclient", "tqdm"]:
        assert name in pins, f"{name} is not pinned in requirements.lock"


def test_installed_versions_are_the_pinned_ones():
    pins = lock_pins()
    for name in ["spconv-cu118", "pytorch-quantization", "onnx", "onnxruntime", "netron", "jupyterlab"]:
        assert metadata.version(name) == pins[name]
    assert metadata.version("torch").split("+")[0] == pins["torch"]
