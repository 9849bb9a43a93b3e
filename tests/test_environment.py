"""The pins: requirements.lock is generated (with hashes), environment.yml is derived from it, and the
installed packages are the pinned ones."""
import importlib.util
import re
import tomllib
from importlib import metadata

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("environment_yml", ROOT / "tools" / "environment_yml.py")
environment_yml = importlib.util.module_from_spec(spec)
spec.loader.exec_module(environment_yml)


def lock_text() -> str:
    return (ROOT / "requirements.lock").read_text()


def lock_pins() -> dict:
    return {name.lower().replace("_", "-"): version for name, version in environment_yml.lock_pins(lock_text())}


def test_environment_yml_is_derived_from_the_lock():
    assert (ROOT / "environment.yml").read_text() == environment_yml.environment_yml(lock_text()), \
        "environment.yml is out of date: run tools/lock.sh (or python3 tools/environment_yml.py > environment.yml)"


def test_every_pin_has_a_hash():
    entries = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", lock_text().split("\n", 2)[2])  # after the two header lines
    assert len(entries) == len(lock_pins()) >= 100
    for entry in entries:
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), f"no hash for {entry.splitlines()[0]}"


def test_required_pins():
    pins = lock_pins()
    assert pins["torch"].split("+")[0] == "2.13.0"
    assert pins["spconv-cu118"] == "2.3.8"
    assert pins["pytorch-quantization"] == "2.1.3"
    assert pins["hypothesis"] == "6.170.15" and pins["jupyter-server-proxy"] == "4.6.0"
    for name in ["onnx", "onnxruntime", "netron", "ipywidgets", "matplotlib", "jupyterlab", "nbclient", "tqdm",
                 "simpervisor", "pytest", "playwright"]:
        assert name in pins, f"{name} is not pinned in requirements.lock"


def test_test_only_packages_are_not_runtime_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {re.split(r"[<>=\[ ]", d)[0].lower() for d in project["dependencies"]}
    assert {"pytest", "playwright", "hypothesis"} & runtime == set()
    assert {re.split(r"[<>=\[ ]", d)[0].lower() for d in project["optional-dependencies"]["test"]} == \
        {"pytest", "playwright", "hypothesis"}
    pins = lock_pins()
    assert all(name in pins for name in runtime), "a runtime dependency is missing from the lock: run tools/lock.sh"


def test_installed_versions_are_the_pinned_ones():
    pins = lock_pins()
    for name in ["spconv-cu118", "pytorch-quantization", "onnx", "onnxruntime", "netron", "jupyterlab",
                 "jupyter-server-proxy", "hypothesis"]:
        assert metadata.version(name) == pins[name], name
    assert metadata.version("torch").split("+")[0] == pins["torch"].split("+")[0]
