"""Tracing and export: the scoped patcher, the contract, the re-run from the file, the command line."""
from pathlib import Path

import numpy as np
import onnx
import pytest
import spconv.pytorch as spconv
import torch
from torch import nn

from helpers.check.compare import compare
from helpers.check.contract import BEVFUSION_OPS, check_contract
from helpers.check.rerun import run_graph
from helpers.config import get_config
from helpers.errors import WorkbookError
from helpers import files
from helpers.files import save_atomic
from helpers.model import ResidualAdd, build_scn, place
from helpers.pipeline import export_scn, prepare_scn, trace_scn
from helpers.quant.fuse import fuse
from helpers.quant.modules import quantize_scn
from helpers.quant.precision import set_precision
from helpers.quant.ranges import dynamic_ranges
from helpers.trace.handlers import REGISTRY
from helpers.trace.registry import Registry, tracing
from helpers.trace.tracer import Tracer
from tests.conftest import random_voxels, real_file


def originals():
    """What every registered method is right now: the class's own attribute and what lookup finds."""
    return [(p.owner, p.name, p.owner.__dict__.get(p.name), getattr(p.owner, p.name)) for p in REGISTRY.patches]


def prepared(cfg, n=2500, int8=True, seed=0):
    voxels, coords = random_voxels(cfg, n=n, seed=seed)
    model = place(build_scn(cfg), "cpu")
    batches = [(voxels, coords), random_voxels(cfg, n=n, seed=seed + 1)]
    return prepare_scn(model, batches, int8=int8, progress=False), voxels, coords


@pytest.fixture(scope="module")
def bevfusion():
    return prepared(get_config())


def test_registry_decorator_returns_the_handler_unchanged():
    registry = Registry()

    def handler(tracer, output, module, x):
        pass
    assert registry.register(nn.ReLU, "forward")(handler) is handler
    assert [(p.owner, p.name, p.handler) for p in registry.patches] == [(nn.ReLU, "forward", handler)]


def test_patches_exist_only_inside_the_with_block_even_after_an_exception():
    before = originals()
    tracer = Tracer()
    with pytest.raises(ZeroDivisionError):
        with tracing(tracer, REGISTRY):
            for owner, name, _, original in before:  # every registered method is a wrapper of the original
                assert getattr(owner, name).__wrapped__ is original
            1 / 0
    assert originals() == before
    assert "permute" not in torch.Tensor.__dict__  # inherited from TensorBase, and inherited again


def test_reentrancy_guard_records_an_op_once():
    """dense() calls permute and contiguous inside: only ScatterDense is recorded, then our one permute."""
    features = torch.randn(3, 2)
    x = spconv.SparseConvTensor(features, torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 2, 1, 1]], dtype=torch.int32),
                                [3, 2, 2], 1)
    tracer = Tracer()
    with tracing(tracer, REGISTRY):
        tracer.new_tensor(features)
        y = x.dense().permute(0, 1, 4, 2, 3)
    assert [n.op for n in tracer.nodes] == ["ScatterDense", "Transpose"]
    assert tracer.nodes[1].attributes["dims"] == [0, 1, 4, 2, 3]
    assert tracer.obj_to_tensor_id[id(y)] == "2"


def test_bevfusion_graph_meets_the_contract(bevfusion, tmp_path):
    model, voxels, coords = bevfusion
    result = export_scn(model, voxels, coords, tmp_path / "scn.onnx")
    saved = onnx.load(str(tmp_path / "scn.onnx"))
    assert check_contract(saved, op_counts=BEVFUSION_OPS) == []
    onnx.checker.check_model(saved)  # custom ops in their own domain pass the standard checker
    nodes = saved.graph.node
    assert len(nodes) == 40 and saved.graph.input[0].name == "0" and saved.graph.output[0].name == "40"
    assert [n.output[0] for n in nodes] == [str(i) for i in range(1, 41)]
    assert [n.name for n in nodes[:5]] == ["conv0", "conv1", "conv2", "add0", "relu0"]
    assert [n.name for n in nodes[-3:]] == ["scatter0", "transpose0", "reshape0"]
    a = {x.name: onnx.helper.get_attribute_value(x) for x in nodes[0].attribute}
    assert a["precision"] == b"fp16" and a["output_precision"] == b"int8" and a["activation"] == b"ReLU"
    assert a["rulebook"] == b"subm1" and a["kernel_size"] == [3, 3, 3] and a["subm"] == 1
    conv_out = {x.name: onnx.helper.get_attribute_value(x) for x in nodes[36].attribute}
    assert conv_out["kernel_size"] == [1, 1, 3] and conv_out["output_precision"] == b"fp16"
    assert conv_out["input_spatial_shape"] == [180, 180, 5] and conv_out["output_spatial_shape"] == [180, 180, 2]
    assert len(conv_out["weight_dynamic_ranges"]) == 128
    scatter = {x.name: onnx.helper.get_attribute_value(x) for x in nodes[37].attribute}
    assert scatter == {"input_spatial_shape": [180, 180, 2], "format": b"xyz", "output_shape": [1, 128, 180, 180, 2]}
    dims = [onnx.helper.get_attribute_value(n.attribute[0]) for n in nodes[38:]]
    assert dims == [[0, 1, 4, 2, 3], [1, 256, 180, 180]]
    weight = {t.name: t for t in saved.graph.initializer}["spconv0.weight"]
    assert list(weight.dims) == [16, 3, 3, 3, 5] and weight.data_type == onnx.TensorProto.FLOAT16
    # the dynamic ranges are the calibrated amax values; conv0 reads fp16 and carries none
    assert not any(name.endswith(("dynamic_range", "dynamic_ranges")) for name in a)
    conv1 = {x.name: onnx.helper.get_attribute_value(x) for x in nodes[1].attribute}
    assert conv1["input_dynamic_range"] == pytest.approx(
        dynamic_ranges(model)[model.encoder_layers.encoder_layer1[0].conv1]["input_dynamic_range"])
    # the file alone reproduces the PyTorch output
    diff = compare(result.output, run_graph(saved, voxels, coords))
    assert diff["max_abs"] <= 1e-4 and diff["cosine"] > 0.9999


@pytest.mark.parametrize("grid,layout", [("bevfusion-0075", "zyx"), ("bevfusion-01", "xyz"), ("bevfusion-01", "zyx")])
def test_layouts_and_grids(grid, layout, tmp_path):
    cfg = get_config(grid, layout)
    model, voxels, coords = prepared(cfg, n=1500, int8=(layout == "xyz"))
    result = export_scn(model, voxels, coords, tmp_path / "scn.onnx")
    assert check_contract(tmp_path / "scn.onnx", op_counts=BEVFUSION_OPS) == []
    bev = 180 if grid == "bevfusion-0075" else 128
    assert list(result.output.shape) == [1, 256, bev, bev]
    scatter = {x.name: onnx.helper.get_attribute_value(x) for x in result.model.graph.node[37].attribute}
    assert scatter["format"] == layout.encode()
    if layout == "zyx":
        assert scatter["input_spatial_shape"] == [2, bev, bev]
        transpose = result.model.graph.node[38].attribute[0]
        assert onnx.helper.get_attribute_value(transpose) == [0, 1, 2, 4, 3]
        conv_out = {x.name: onnx.helper.get_attribute_value(x) for x in result.model.graph.node[36].attribute}
        assert conv_out["kernel_size"] == [3, 1, 1] and conv_out["stride"] == [2, 1, 1]
    diff = compare(result.output, run_graph(result.model, voxels, coords))
    assert diff["max_abs"] <= 1e-4


def test_two_exports_in_one_process_are_byte_identical(tmp_path):
    before = originals()
    files = []
    for i in range(2):
        cfg = get_config("bevfusion-01")
        model, voxels, coords = prepared(cfg, n=1200)
        export_scn(model, voxels, coords, tmp_path / f"scn{i}.onnx")
        files.append((tmp_path / f"scn{i}.onnx").read_bytes())
    assert files[0] == files[1]
    assert originals() == before


class TinyBlock(spconv.SparseModule):
    """A residual block of our own design: 5x5x5 subm conv, BN, ReLU, 1x1x1 subm conv, BN, add, ReLU."""

    def __init__(self, c):
        super().__init__()
        self.a = spconv.SubMConv3d(c, c, 5, padding=2, bias=False, indice_key="k5")
        self.bn_a = nn.BatchNorm1d(c)
        self.act = nn.ReLU()
        self.b = spconv.SubMConv3d(c, c, 1, bias=False, indice_key="k1")
        self.bn_b = nn.BatchNorm1d(c)
        self.add = ResidualAdd()
        self.out = nn.ReLU()

    def forward(self, x):
        y = self.a(x)
        y = y.replace_feature(self.act(self.bn_a(y.features)))
        y = self.b(y)
        y = y.replace_feature(self.bn_b(y.features))
        return y.replace_feature(self.out(self.add(y.features, x.features)))


class TinyNet(nn.Module):
    """Another SCN: 4 -> 8 channels, a block, a 2x2x2 stride-2 down-sampling, a dilated conv, dense BEV."""

    def __init__(self):
        super().__init__()
        self.stem = spconv.SparseSequential(spconv.SubMConv3d(5, 8, 3, padding=1, bias=False, indice_key="s"),
                                            nn.BatchNorm1d(8), nn.ReLU())
        self.block = TinyBlock(8)
        self.down = spconv.SparseSequential(spconv.SparseConv3d(8, 12, 2, stride=2, bias=False), nn.BatchNorm1d(12),
                                            nn.ReLU())
        self.dilated = spconv.SparseConv3d(12, 6, 3, dilation=2, padding=2, bias=False, indice_key="d")

    def forward(self, voxels, coords):
        x = spconv.SparseConvTensor(voxels, coords, [32, 24, 8], 1)
        x = self.dilated(self.down(self.block(self.stem(x))))
        dense = x.dense()  # [1, 6, 16, 12, 4]
        return dense.permute(0, 1, 4, 2, 3).reshape(1, 24, 16, 12)


def tiny_inputs(seed=0):
    rng = np.random.default_rng(seed)
    xyz = np.unique(np.stack([rng.integers(0, 32, 600), rng.integers(0, 24, 600), rng.integers(0, 8, 600)], 1), axis=0)
    coords = torch.from_numpy(np.concatenate([np.zeros((len(xyz), 1)), xyz], 1).astype(np.int32))
    return torch.randn(len(xyz), 5, generator=torch.Generator().manual_seed(seed)), coords


def test_a_network_of_another_design_exports_through_the_same_code(tmp_path):
    torch.manual_seed(0)
    model = place(TinyNet().eval(), "cpu")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_var.uniform_(0.5, 2.0)
    voxels, coords = tiny_inputs()
    with torch.no_grad():
        float_out = model(voxels, coords)
    # TinyNet has no sparse_shape attribute to read its coordinate order from: it is stated
    ready = prepare_scn(model, [(voxels, coords), tiny_inputs(1)], int8=True, progress=False, layout="xyz")
    result = export_scn(ready, voxels, coords, tmp_path / "tiny.onnx", layout="xyz")
    ops = [n.op for n in result.tracer.nodes]
    assert ops == ["SparseConvolution"] * 3 + ["Add", "Relu"] + ["SparseConvolution"] * 2 + \
        ["ScatterDense", "Transpose", "Reshape"]
    assert check_contract(tmp_path / "tiny.onnx") == []
    attrs = [{x.name: onnx.helper.get_attribute_value(x) for x in n.attribute} for n in result.model.graph.node]
    assert attrs[1]["kernel_size"] == [5, 5, 5] and attrs[1]["activation"] == b"ReLU"
    assert attrs[5]["stride"] == [2, 2, 2] and attrs[5]["rulebook"] == b""  # no indice_key: empty, no crash
    assert attrs[6]["dilation"] == [2, 2, 2] and attrs[6]["output_spatial_shape"] == [16, 12, 4]
    assert compare(float_out, result.output)["cosine"] > 0.999  # fp16-rounded weights only
    assert compare(result.output, run_graph(result.model, voxels, coords))["max_abs"] <= 1e-4


def test_unsupported_module_is_named_with_the_fix():
    model = prepare_scn(place(TinyNet().eval(), "cpu"), [tiny_inputs()], int8=False, progress=False, layout="xyz")
    model.block.out = nn.LeakyReLU()
    with pytest.raises(WorkbookError, match=r"module 'block.out' of type LeakyReLU has no ONNX handler.*register"):
        trace_scn(model, *tiny_inputs(), layout="xyz")
    with pytest.raises(WorkbookError, match=r"'stem.1' of type BatchNorm1d .*fold it first"):
        trace_scn(quantize_scn(TinyNet().eval()), *tiny_inputs(), layout="xyz")


def test_uncalibrated_int8_export_names_the_layers(tmp_path):
    cfg = get_config("bevfusion-01")
    voxels, coords = random_voxels(cfg, n=800)
    model = set_precision(fuse(quantize_scn(place(build_scn(cfg), "cpu")), voxels, coords))
    with pytest.raises(WorkbookError, match=r"48 of 48 .*encoder_layer1\.0\.conv1\.input \(no amax\)"):
        export_scn(model, voxels, coords, tmp_path / "scn.onnx")  # the int8 layers: conv_input reads fp16
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_contract_checker_lists_each_violation(bevfusion, tmp_path):
    model, voxels, coords = bevfusion
    good = export_scn(model, voxels, coords).model
    bad = onnx.ModelProto()
    bad.CopyFrom(good)
    nodes = bad.graph.node
    del nodes[1].attribute[[a.name for a in nodes[1].attribute].index("rulebook")]
    ranges = [a for a in nodes[2].attribute if a.name == "weight_dynamic_ranges"][0]
    del ranges.floats[-1]
    [a for a in nodes[3].attribute if a.name == "input0_dynamic_range"][0].f = float("nan")
    [t for t in bad.graph.initializer if t.name == "spconv4.bias"][0].data_type = onnx.TensorProto.FLOAT
    nodes[4].input[0] = "3"  # relu0 reading conv2's output: a stray, unfused ReLU
    problems = check_contract(bad)
    text = "\n".join(problems)
    assert "conv1 (SparseConvolution): attribute 'rulebook' missing" in text
    assert "weight_dynamic_ranges has 31 values for 32 channels" in text or "has 15 values for 16" in text
    assert "add0 (Add): input0_dynamic_range must be finite" in text
    assert "spconv4.bias must be FLOAT16" in text
    assert "a Relu must follow an Add" in text
    assert len(problems) >= 5


def test_save_is_atomic(tmp_path, bevfusion, monkeypatch):
    """A save that fails after writing (here: the rename) leaves the old file and no temporary behind."""
    model, voxels, coords = bevfusion
    proto = export_scn(model, voxels, coords).model
    target = tmp_path / "scn.onnx"
    target.write_bytes(b"old")

    def failing_replace(source, destination):
        assert Path(source).read_bytes() == proto.SerializeToString(deterministic=True)  # fully written
        raise OSError("disk full")
    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(WorkbookError, match=r"scn.onnx: cannot be written \(disk full\); nothing was written"):
        save_atomic(proto, target)
    assert [p.name for p in tmp_path.iterdir()] == ["scn.onnx"] and target.read_bytes() == b"old"
    monkeypatch.undo()
    assert save_atomic(proto, target) == target and onnx.load(str(target)) == proto
    assert [p.name for p in tmp_path.iterdir()] == ["scn.onnx"]


def test_real_bevfusion_voxels_re_run_from_the_file(tmp_path):
    """17,748 voxels from BEVFusion's own voxelizer for a nuScenes frame."""
    voxels = torch.from_numpy(np.load(real_file("bevfusion_voxels_17748x5_fp16.npy")).astype(np.float32))
    coords = torch.from_numpy(np.load(real_file("bevfusion_coors_17748x4_bxyz_int32.npy")))
    cfg = get_config()
    model = prepare_scn(place(build_scn(cfg), "cpu"), [(voxels, coords)], int8=True, progress=False)
    result = export_scn(model, voxels, coords, tmp_path / "scn.onnx")
    assert check_contract(tmp_path / "scn.onnx", op_counts=BEVFUSION_OPS) == []
    diff = compare(result.output, run_graph(tmp_path / "scn.onnx", voxels, coords))
    assert diff["max_abs"] <= 1e-4 and diff["cosine"] >= 0.9999
