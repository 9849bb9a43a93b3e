"""Tests of helpers.quant on small random scans (CPU, fp32): conversion, BN folding, ReLU fusion,
calibration, precision flags and the errors a learner can run into."""
import copy

import pytest
import spconv.pytorch as spconv
import torch
from torch import nn

from helpers.check.compare import compare
from helpers.config import get_config
from helpers.errors import WorkbookError
from helpers.model import ResidualAdd, build_scn, place
from helpers.quant.calibrate import calibrate
from helpers.quant.cost import int8_cost
from helpers.quant.fuse import fold_bn, fuse, fuse_relu
from helpers.quant.modules import QuantAdd, QuantSparseConv, named_quantizers, quantize_scn
from helpers.quant.precision import quantizers_disabled, set_precision, set_quantizers, sync_quantizers
from helpers.quant.ranges import amax_table, check_calibrated, dynamic_ranges


def random_scan(seed, n=3000, channels=5, region=(40, 40, 12), offset=(480, 480, 14)):
    """n unique voxels clustered in a small box of the grid: features [n, channels], coords [n, 4] (b, x, y, z)."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(region[0] * region[1] * region[2], generator=g)[:n]  # unique cells
    x, y, z = cells // (region[1] * region[2]), (cells // region[2]) % region[1], cells % region[2]
    coords = torch.stack([torch.zeros_like(x), x + offset[0], y + offset[1], z + offset[2]], 1).int()  # [n, 4]
    return torch.randn(n, channels, generator=g), coords


def count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


def relative_error(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def scan():
    return random_scan(0)


@pytest.fixture(scope="module")
def float_scn():
    return place(build_scn(get_config("bevfusion-01")), "cpu")  # 1024 x 1024 x 41 grid


@pytest.fixture(scope="module")
def prepared(float_scn, scan):
    return set_precision(fuse(quantize_scn(copy.deepcopy(float_scn)), *scan))


@pytest.fixture(scope="module")
def calibrated(prepared):
    return calibrate(copy.deepcopy(prepared), [random_scan(1), random_scan(2)], progress=False)


# --- conversion and fusion of BEVFusion's SCN ---

def test_module_counts_after_prepare(prepared):
    assert count(prepared, QuantSparseConv) == 21
    assert count(prepared, QuantAdd) == 8
    assert count(prepared, spconv.conv.SparseConvolution) == 21  # no float conv left
    assert count(prepared, ResidualAdd) == 0
    assert count(prepared, nn.BatchNorm1d) == 0  # all folded
    relu_convs = [m.layer_name for m in prepared.modules() if getattr(m, "activation", None) == "ReLU"]
    assert len(relu_convs) == 13  # conv_input, 3 down convs, conv_out, 8 conv1
    assert "conv_input.0" in relu_convs and "conv_out.0" in relu_convs
    assert sum(name.endswith("conv1") for name in relu_convs) == 8
    assert count(prepared, nn.ReLU) == 8  # the ReLU after each residual add stays


def test_module_paths_are_kept(float_scn, prepared):
    paths = dict(prepared.named_modules())
    for path, module in float_scn.named_modules():
        assert path in paths  # BN and fused ReLU paths now hold nn.Identity
        if isinstance(module, spconv.conv.SparseConvolution):
            assert isinstance(paths[path], QuantSparseConv) and paths[path].layer_name == path
            assert paths[path].indice_key == module.indice_key and paths[path].subm == module.subm
    assert isinstance(paths["encoder_layers.encoder_layer1.0.add"], QuantAdd)
    assert isinstance(paths["encoder_layers.encoder_layer1.0.bn1"], nn.Identity)


def test_quantize_scn_is_idempotent(float_scn):
    model = quantize_scn(copy.deepcopy(float_scn))
    before = dict(model.named_modules())
    quantize_scn(model)
    after = dict(model.named_modules())
    assert before.keys() == after.keys() and all(before[k] is after[k] for k in before)


def test_unfused_quant_model_equals_float_exactly(float_scn, scan):
    model = quantize_scn(copy.deepcopy(float_scn))
    with torch.no_grad(), quantizers_disabled(model):
        assert torch.equal(model(*scan), float_scn(*scan))


def test_fused_model_equals_float(float_scn, prepared, scan):
    with torch.no_grad(), quantizers_disabled(prepared):
        fused = prepared(*scan)
        reference = float_scn(*scan)
    assert fused.shape == (1, 256, 128, 128)
    assert relative_error(fused, reference) < 1e-5


# --- calibration ---

def test_calibration_gives_finite_positive_amax(calibrated):
    check_calibrated(calibrated)
    rows = amax_table(calibrated)
    assert len(rows) == 21 * 2 + 8
    assert rows[0]["layer"] == "conv_input.0" and rows[0]["quantizer"] == "input"
    for row in rows:
        assert row["amax_min"] > 0 and row["amax_max"] < float("inf")
        if row["quantizer"] == "weight":
            assert row["amax"] is None and row["channels"] > 1
        else:
            assert row["amax"] > 0 and row["channels"] == 1
    ranges = dynamic_ranges(calibrated)
    layers = [m for m in calibrated.modules() if isinstance(m, (QuantSparseConv, QuantAdd))]
    assert list(ranges) == layers[1:]  # every layer but the first, whose input is fp16, in module order
    for m in layers[1:]:
        if isinstance(m, QuantSparseConv):
            weights = ranges[m]["weight_dynamic_ranges"]
            assert len(weights) == m.out_channels and all(r > 0 for r in weights)
            assert ranges[m]["input_dynamic_range"] > 0
        else:
            assert ranges[m]["input0_dynamic_range"] == ranges[m]["input1_dynamic_range"] > 0


def test_weight_amax_is_per_output_channel_max(calibrated):
    conv = calibrated.get_submodule("encoder_layers.encoder_layer2.0.conv1")
    expected = conv.weight.detach().abs().amax(dim=(1, 2, 3, 4))  # [C_out]
    assert dynamic_ranges(calibrated)[conv]["weight_dynamic_ranges"] == expected.tolist()


def test_int8_output_close_to_float(calibrated, scan):
    cost = int8_cost(calibrated, *scan)
    print(f"int8 cost on a {len(scan[0])}-voxel scan: {cost}")
    assert cost["cosine"] > 0.99 and 0 < cost["max_abs"] < 1
    with torch.no_grad():
        quantized = calibrated(*scan)  # quantizers are on after calibrate()
        with quantizers_disabled(calibrated):
            plain = calibrated(*scan)
    assert not torch.equal(quantized, plain)
    assert compare(quantized, plain) == cost


def test_calibrate_twice_gives_the_same_amax(calibrated):
    again = calibrate(copy.deepcopy(calibrated), [random_scan(1), random_scan(2)], progress=False)
    assert amax_table(again) == amax_table(calibrated)


def test_calibrate_without_batches_raises(prepared):
    with pytest.raises(WorkbookError, match="no batches"):
        calibrate(prepared, [])


def test_uncalibrated_model_is_named(prepared):
    with pytest.raises(WorkbookError, match=r"conv_input\.0\.input .*and \d+ more.*calibrate"):
        check_calibrated(prepared)
    with pytest.raises(WorkbookError, match=r"48 of 48 .*encoder_layer1\.0\.conv1\.input \(no amax\).*calibrate"):
        dynamic_ranges(prepared)  # the int8 layers only: conv_input reads fp16


def test_nan_amax_is_named(calibrated):
    model = copy.deepcopy(calibrated)
    add = model.get_submodule("encoder_layers.encoder_layer3.1.add")
    add.quantizer.amax = float("nan")
    with pytest.raises(WorkbookError, match=r"1 of 50 .*encoder_layer3\.1\.add\.add \(non-finite amax\)"):
        check_calibrated(model)
    with pytest.raises(WorkbookError, match=r"1 of 48 .*encoder_layer3\.1\.add\.add \(non-finite amax\)"):
        dynamic_ranges(model)


def test_fp16_layers_need_no_ranges(calibrated, prepared):
    model = set_precision(copy.deepcopy(calibrated), int8=False)
    assert dynamic_ranges(model) == {}
    assert dynamic_ranges(set_precision(copy.deepcopy(prepared), int8=False)) == {}  # nor calibration


def test_a_weight_amax_of_the_wrong_length_is_named(calibrated):
    model = copy.deepcopy(calibrated)
    conv = model.get_submodule("encoder_layers.encoder_layer2.0.conv1")
    conv.weight_quantizer._amax = conv.weight_quantizer._amax[:-1].clone()  # 31 values for 32 channels
    with pytest.raises(WorkbookError, match=r"encoder_layer2\.0\.conv1 has 31 weight amax values for 32 output"):
        dynamic_ranges(model)


# --- precision and quantizer switches ---

def test_precision_pattern(prepared):
    layers = [m for m in prepared.modules() if isinstance(m, (QuantSparseConv, QuantAdd))]
    first, last = prepared.get_submodule("conv_input.0"), prepared.get_submodule("conv_out.0")
    assert (first.precision, first.output_precision) == ("fp16", "int8")
    assert (last.precision, last.output_precision) == ("int8", "fp16")
    for m in layers:
        if m is not first and m is not last:
            assert (m.precision, m.output_precision) == ("int8", "int8")
    try:
        set_precision(prepared, int8=False)
        assert all(m.precision == m.output_precision == "fp16" for m in layers)
    finally:
        set_precision(prepared)
    assert first.precision == "fp16" and last.output_precision == "fp16"


def test_quantizers_disabled_restores_state_after_exception(calibrated):
    quantizers = [q for _, _, q in named_quantizers(calibrated)]
    quantizers[3].disable()  # a mixed state must come back as it was
    before = [q._disabled for q in quantizers]
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with quantizers_disabled(calibrated):
                assert all(q._disabled for q in quantizers)
                raise RuntimeError("boom")
        assert [q._disabled for q in quantizers] == before
        set_quantizers(calibrated, False)
        assert all(q._disabled for q in quantizers)
    finally:
        set_quantizers(calibrated, True)
    states = {(path, kind): q._disabled for path, kind, q in named_quantizers(calibrated)}
    assert states.pop(("conv_input.0", "input")) and states.pop(("conv_input.0", "weight"))  # the fp16 layer
    assert not any(states.values())


def test_precision_and_quantizer_state_are_one_fact(calibrated, scan):
    """An fp16 layer has its quantizers off, after set_precision, calibrate and set_quantizers alike."""
    model = copy.deepcopy(calibrated)
    first = model.get_submodule("conv_input.0")
    assert first.precision == "fp16" and first.input_quantizer._disabled and first.weight_quantizer._disabled
    assert first.input_quantizer.amax is not None  # calibrated all the same: int8_cost can try it
    assert first not in dynamic_ranges(model) and len(dynamic_ranges(model)) == 20 + 8
    calibrate(model, [random_scan(1)], progress=False)
    assert first.input_quantizer._disabled and first.weight_quantizer._disabled
    add = model.get_submodule("encoder_layers.encoder_layer2.1.add")
    add.precision = "fp16"  # an fp16 add: its quantizer goes off too
    sync_quantizers(model)
    assert add.quantizer._disabled and add not in dynamic_ranges(model)
    add.precision = "int8"
    set_precision(model, int8=False)
    assert all(q._disabled for _, _, q in named_quantizers(model)) and dynamic_ranges(model) == {}
    set_precision(model)
    # the fp16 input is not quantized: the first conv's fake-quant output equals its float output
    with torch.no_grad():
        x = spconv.SparseConvTensor(scan[0], scan[1], [1024, 1024, 41], 1)
        quantized = first(x).features
        with quantizers_disabled(model):
            assert torch.equal(first(x).features, quantized)
    assert int8_cost(model, *scan)["cosine"] != int8_cost(model, *scan, quantize_fp16_layers=True)["cosine"]


# --- a network of another shape: conversion is generic ---

class Residual(spconv.SparseModule):
    """SubM conv -> BN, + identity, ReLU."""

    def __init__(self, channels):
        super().__init__()
        self.conv = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key="toy1")
        self.bn = nn.BatchNorm1d(channels)
        self.add = ResidualAdd()
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.conv(x)
        y = y.replace_feature(self.bn(y.features))
        return y.replace_feature(self.relu(self.add(y.features, x.features)))


class ToyNet(nn.Module):
    """stem (SubM + BN + ReLU) -> residual -> stride-2 SparseConv3d + BN + ReLU -> 1x1 SubM head with a bias."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.stem = spconv.SparseSequential(
            spconv.SubMConv3d(4, 8, 3, padding=1, bias=False, indice_key="toy1"), nn.BatchNorm1d(8),
            nn.ReLU(inplace=True))  # in place, as mmdet3d builds it
        self.res = Residual(8)
        self.down = spconv.SparseSequential(
            spconv.SparseConv3d(8, 16, 3, stride=2, padding=1, bias=False, indice_key="toy_down"),
            nn.BatchNorm1d(16), nn.ReLU())
        self.head = spconv.SubMConv3d(16, 6, 1, bias=True, indice_key="toy2")
        for m in self.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.8, 1.2)
                m.bias.data.uniform_(-0.2, 0.2)
            if isinstance(m, spconv.SubMConv3d) and m.bias is not None:
                m.bias.data.uniform_(-0.5, 0.5)

    def forward(self, voxels, coords):
        x = spconv.SparseConvTensor(voxels, coords, [24, 24, 8], 1)
        return self.head(self.down(self.res(self.stem(x)))).dense()  # [1, 6, 12, 12, 4]


def toy_scan(seed):
    return random_scan(seed, n=600, channels=4, region=(24, 24, 8), offset=(0, 0, 0))


def test_generic_network_is_converted(scan):
    reference = place(ToyNet().eval(), "cpu")
    model = set_precision(fuse(quantize_scn(copy.deepcopy(reference)), *toy_scan(0)))
    assert count(model, QuantSparseConv) == 4 and count(model, QuantAdd) == 1
    assert count(model, nn.BatchNorm1d) == 0 and count(model, nn.ReLU) == 1  # the ReLU after the add stays
    assert [m.activation for m in model.modules() if isinstance(m, QuantSparseConv)] == \
        ["ReLU", "None", "ReLU", "None"]  # stem, res.conv, down, head
    assert model.stem[0].precision == "fp16" and model.head.output_precision == "fp16"
    assert model.res.conv.precision == model.res.conv.output_precision == "int8"
    with torch.no_grad(), quantizers_disabled(model):
        assert relative_error(model(*toy_scan(3)), reference(*toy_scan(3))) < 1e-5
    calibrate(model, [toy_scan(1)], method="percentile", progress=False)
    assert len(dynamic_ranges(model)[model.down[0]]["weight_dynamic_ranges"]) == 16
    assert int8_cost(model, *toy_scan(3))["cosine"] > 0.99


def test_shared_relu_raises():
    class SharedReLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = spconv.SubMConv3d(4, 4, 3, padding=1, bias=False, indice_key="s")
            self.add = ResidualAdd()
            self.relu = nn.ReLU()  # used after the conv and again after the add

        def forward(self, voxels, coords):
            x = spconv.SparseConvTensor(voxels, coords, [24, 24, 8], 1)
            y = self.relu(self.conv(x).features)
            return self.relu(self.add(y, voxels))

    model = quantize_scn(place(SharedReLU().eval(), "cpu"))
    with pytest.raises(WorkbookError, match="separate ReLU"):
        fuse_relu(model, *toy_scan(0))


def test_conv_output_with_two_readers_is_not_folded():
    class TwoReaders(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = spconv.SubMConv3d(4, 4, 3, padding=1, bias=False, indice_key="s")
            self.bn = nn.BatchNorm1d(4)
            self.add = ResidualAdd()

        def forward(self, voxels, coords):
            y = self.conv(spconv.SparseConvTensor(voxels, coords, [24, 24, 8], 1)).features
            return self.add(self.bn(y), y)  # the raw conv output is also read by the add

    model = quantize_scn(place(TwoReaders().eval(), "cpu"))
    with pytest.raises(WorkbookError, match="other layers also read"):
        fold_bn(model, *toy_scan(0))


def test_fusion_needs_eval_mode():
    model = quantize_scn(place(ToyNet().train(), "cpu"))
    with pytest.raises(WorkbookError, match="eval"):
        fold_bn(model, *toy_scan(0))
