"""A checkpoint that pickles a whole model is read without running any of its code (helpers.whole_model).

The files are made the way NVIDIA's bevfusion_ptq.pth is: torch.save of the detector object itself, its
classes from a package that is then gone (a throwaway module, removed from sys.modules and sys.path),
the SCN's sparse convs carrying pytorch-quantization-like quantizers with `_amax` buffers."""
import importlib
import os
import pickle
import subprocess
import sys
import textwrap
from collections import OrderedDict

import pytest
import torch

from helpers import pipeline
from helpers.checkpoint import load_checkpoint, read_state_dict
from helpers.config import get_config
from helpers.errors import WorkbookError
from helpers.model import build_scn, place
from helpers.quant.calibrate import calibrate
from helpers.quant.fuse import fuse
from helpers.quant.modules import named_quantizers, quantize_scn
from helpers.whole_model import Record, load_records, read_whole_model
from tests.conftest import random_voxels

DETECTOR = textwrap.dedent('''
    """A detector package that will not be installed when its checkpoint is read."""
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __setstate__(self, state):  # would run on an ordinary unpickle
            open(MARKER, "w").close()
            super().__setstate__(state)

    class BEVFusion(Layer): pass
    class SparseConvolutionQunat(Layer): pass
    class TensorQuantizer(Layer): pass

    MARKER = ""
''')


@pytest.fixture
def detector_module(tmp_path):
    """Import a throwaway `fake_mmdet3d` from tmp_path; afterwards remove it, as if never installed."""
    (tmp_path / "fake_mmdet3d.py").write_text(DETECTOR)
    sys.path.insert(0, str(tmp_path))
    module = importlib.import_module("fake_mmdet3d")
    module.MARKER = str(tmp_path / "setstate-ran")
    yield module
    sys.modules.pop("fake_mmdet3d", None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def forget(module, tmp_path):
    """The package is gone: not importable, not in sys.modules."""
    sys.modules.pop(module.__name__, None)
    sys.path.remove(str(tmp_path))
    (tmp_path / "fake_mmdet3d.py").unlink()
    with pytest.raises(ImportError):
        importlib.import_module("fake_mmdet3d")


def mirror(module, flat):
    """A pickled-detector tree of the package's classes holding `flat` {path: tensor} as parameters/buffers."""
    root = module.BEVFusion()
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = root
        for name in parents:
            if name not in node._modules:
                kind = module.TensorQuantizer if name.endswith("quantizer") else module.Layer
                node.add_module(name, kind())
            node = node._modules[name]
        if leaf in ("weight", "bias"):
            node.register_parameter(leaf, torch.nn.Parameter(value.clone()))
        else:
            node.register_buffer(leaf, value.clone())
    return root


def calibrated_amax(model, cfg):
    """{quantizer path: amax} of a quantized, folded, calibrated copy of `model` (the PTQ the file holds)."""
    import copy
    quant = quantize_scn(place(copy.deepcopy(model), "cpu"))
    voxels, coords = random_voxels(cfg, n=400)
    fuse(quant, voxels, coords)
    calibrate(quant, [(voxels, coords)], progress=False)
    return {f"{path}.{'quantizer' if kind == 'add' else kind + '_quantizer'}": q.amax.detach().clone()
            for path, kind, q in named_quantizers(quant)}


def test_a_pickled_whole_model_loads_weights_and_calibrated_amax(detector_module, tmp_path):
    cfg = get_config()
    source = build_scn(cfg)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not what a fresh model holds
    amax = calibrated_amax(source, cfg)
    flat = {f"encoders.lidar.backbone.{k}": v for k, v in source.state_dict().items()}
    flat.update({f"encoders.lidar.backbone.{k}._amax": v for k, v in amax.items()})
    path = tmp_path / "bevfusion_ptq.pth"
    torch.save(mirror(detector_module, flat), path)
    forget(detector_module, tmp_path)
    with pytest.raises(Exception):  # torch's safe loader refuses the file
        torch.load(path, weights_only=True)

    tree = load_records(path)
    assert isinstance(tree, Record) and tree.qualname == "fake_mmdet3d.BEVFusion"
    target = load_checkpoint(build_scn(cfg), path)
    assert not (tmp_path / "setstate-ran").exists()  # the package's __setstate__ never ran
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert target.checkpoint_amax.keys() == amax.keys() and len(amax) == 2 * 21 + 8
    voxels, coords = random_voxels(cfg, n=400, seed=3)
    prepared = pipeline.prepare_scn(target, [(voxels, coords)], progress=False)
    for path_, kind, q in named_quantizers(prepared):  # as they are: no re-calibration on the other scan
        key = f"{path_}.{'quantizer' if kind == 'add' else kind + '_quantizer'}"
        assert torch.equal(q.amax.reshape(-1), amax[key].reshape(-1)), key


def test_a_whole_model_whose_ranges_do_not_match_is_refused(detector_module, tmp_path):
    cfg = get_config()
    flat = {f"encoders.lidar.backbone.{k}": v for k, v in build_scn(cfg).state_dict().items()}
    flat["encoders.lidar.backbone.conv_input.0.input_quantizer._amax"] = torch.tensor(3.0)  # one range only
    path = tmp_path / "partial.pth"
    torch.save(mirror(detector_module, flat), path)
    forget(detector_module, tmp_path)
    with pytest.raises(WorkbookError, match=r"partial.pth: its calibrated _amax ranges do not match .* missing "
                                            r"\['conv_input.0.weight_quantizer'"):
        load_checkpoint(build_scn(cfg), path)


class OsSystem:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w')",)


class Popen:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return subprocess.Popen, (["touch", str(self.marker)],)


class NestedGlobal:
    """A tensor rebuild (an allowed function) handed a payload object instead of a storage."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (OsSystem(self.marker), 0, (1,), (1,), False, OrderedDict())


@pytest.mark.parametrize("payload", [OsSystem, Eval, Popen, NestedGlobal])
@pytest.mark.parametrize("wrap", ["state_dict", "module attribute", "bare pickle"])
def test_payloads_that_would_run_code_are_refused_or_inert(tmp_path, payload, wrap):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    if wrap == "state_dict":
        torch.save({"state_dict": {"conv_input.0.weight": payload(marker)}}, path)
    elif wrap == "module attribute":  # a real nn.Module tree with the payload inside it
        holder = torch.nn.Module()
        holder.register_buffer("conv_input", torch.ones(1))
        holder.hook = payload(marker)
        torch.save(holder, path)
    else:
        path.write_bytes(pickle.dumps(payload(marker)))  # not even torch's zip format
    try:
        tensors = read_state_dict(path)
    except WorkbookError as err:
        assert str(err).startswith(f"{path}: ") and "\n" not in str(err)
    else:  # the module's own tensors came back; the payload stayed a Record
        assert wrap == "module attribute" and list(tensors) == ["conv_input"]
    assert not marker.exists()
    if wrap == "module attribute" and payload is not NestedGlobal:
        hook = load_records(path).state["hook"]
        assert isinstance(hook, Record) and not hook.state  # inert: the arguments kept, nothing called


def test_command_line_exports_from_a_pickled_whole_model(detector_module, tmp_path, capsys):
    from helpers.data.scene import make_scene
    from helpers.export import main
    import numpy as np
    cfg = get_config()
    source = build_scn(cfg)
    amax = calibrated_amax(source, cfg)
    flat = {f"encoders.lidar.backbone.{k}": v for k, v in source.state_dict().items()}
    flat.update({f"encoders.lidar.backbone.{k}._amax": v for k, v in amax.items()})
    ckpt = tmp_path / "bevfusion_ptq.pth"
    torch.save(mirror(detector_module, flat), ckpt)
    forget(detector_module, tmp_path)
    scan = tmp_path / "scan.npy"
    np.save(scan, make_scene("small")[::8])
    out = tmp_path / "scn.onnx"
    assert main(["--points", str(scan), "--checkpoint", str(ckpt), "--calibrate", "1", "--device", "cpu", "--quiet",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "contract check: passed" in printed and "DISAGREES" not in printed
    assert not (tmp_path / "setstate-ran").exists()
    from helpers.onnx_file import attributes, load_onnx
    conv1 = [n for n in load_onnx(out).graph.node if n.name == "conv1"][0]  # encoder_layer1.0.conv1, int8
    expected = amax["encoder_layers.encoder_layer1.0.conv1.input_quantizer"]
    assert attributes(conv1)["input_dynamic_range"] == pytest.approx(float(expected), rel=1e-6)  # the file's own
