"""The int8-faithful re-run of a saved file (helpers/check/int8.py) against the fake-quant PyTorch model:
bit for bit in fp32 on the CPU, on a synthetic scene and on the real scans."""
import copy

import numpy as np
import onnx
import pytest
import torch
from pytorch_quantization.nn import TensorQuantizer
from pytorch_quantization.tensor_quant import QuantDescriptor, fake_tensor_quant

from helpers.check import int8 as executor
from helpers.check.agree import check_file, compare
from helpers.config import get_config
from helpers.data.points import read_points
from helpers.data.scene import make_scene
from helpers.data.voxelize import voxelize
from helpers.model import build_scn, place
from helpers.pipeline import export_scn, prepare_scn
from helpers.quant.modules import INT8, QuantAdd, QuantSparseConv, quantizers_of
from helpers.quant.reference import reference_run
from tests.conftest import real_file


def exported(batches):
    """(file, reference) for a model prepared and calibrated on `batches`, exported on the first."""
    voxels, coords = batches[0]
    model = prepare_scn(place(build_scn(get_config()), "cpu"), batches, progress=False)
    result = export_scn(model, voxels, coords)
    return result.model, reference_run(model, voxels, coords)


@pytest.fixture(scope="module")
def small():
    """The small synthetic scene (20,000 points) on BEVFusion's grid, calibrated on itself."""
    points = make_scene("small", seed=0)
    return exported([voxelize(torch.from_numpy(points), get_config())])


# --- pytorch-quantization's rounding and clamping, reproduced ---

def test_fake_quant_is_pytorch_quantization_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 16, generator=g) * 3
    ties = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 126.5, 127.5, 200.0, -300.0])  # amax 127: scale exactly 1
    assert torch.equal(executor.fake_quant(ties, torch.tensor(127.0)),
                       torch.tensor([0.0, 2.0, 2.0, -0.0, -2.0, 126.0, 127.0, 127.0, -127.0]))  # half to even, clamp
    for amax in (torch.tensor(2.7), torch.rand(16, generator=g) * 4 + 0.1, torch.tensor(1e-9)):
        ours = executor.fake_quant(x, amax)
        assert torch.equal(ours, fake_tensor_quant(x, amax, 8))  # the function the quantizers call
    quantizer = TensorQuantizer(QuantDescriptor(**INT8, axis=(0,)))  # the model's weight quantizer
    weight = torch.randn(8, 3, 3, 3, 4, generator=g)
    quantizer.amax = weight.abs().amax(dim=(1, 2, 3, 4)).view(-1, 1, 1, 1, 1) * 0.8  # some values clip
    assert torch.equal(executor.fake_quant(weight, quantizer.amax.flatten().view(-1, 1, 1, 1, 1)), quantizer(weight))
    for module in (QuantSparseConv(3, 4, 4, 3), QuantAdd()):  # every quantizer of the model
        for _, q in quantizers_of(module):
            q.amax = torch.tensor(2.0)
            assert torch.equal(q(torch.tensor([-3.0, 3.0])), torch.tensor([-2.0, 2.0]))  # symmetric: -127..127


def test_pytorch_quantizations_default_descriptor_clamps_to_minus_128():
    """Why the model's quantizers say narrow_range=True: QuantDescriptor's default is -128..127."""
    default = TensorQuantizer(QuantDescriptor(num_bits=8))
    default.amax = torch.tensor(2.0)
    assert float(default(torch.tensor([-3.0]))) == pytest.approx(-128 * 2.0 / 127)  # one step beyond -amax
    assert float(executor.fake_quant(torch.tensor([-3.0]), torch.tensor(2.0))) == -2.0


def test_fp16_fake_quant_is_pytorch_quantization_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 16, generator=g) * 3
    half = x.half()  # fp16 inputs (a GPU trace): the integers in fp32, the division in fp16
    assert torch.equal(executor.fake_quant(half, torch.tensor(2.7)), fake_tensor_quant(half, torch.tensor(2.7), 8))


# --- the file's int8 re-run is the fake-quant model ---

def check_bit_for_bit(model, reference):
    stats = {}
    output = executor.run_file(model, reference.voxels.float(), reference.coords,
                               on_node=executor.node_stats_recorder(stats))
    figures = compare(reference.output_int8, output)
    print(f"{len(reference.voxels):,} voxels: int8 re-run vs fake-quant {figures}; "
          f"int8 vs float {compare(reference.output, reference.output_int8)}")
    assert figures["max_abs"] == 0.0  # fp32 on the CPU: bit for bit
    assert all(np.array_equal(reference.stats["int8"][name], stats[name]) for name in stats)  # every node
    assert not torch.equal(reference.output_int8, reference.output)  # int8 did change the numbers
    return output


def test_executor_reproduces_fake_quant_on_the_synthetic_scene(small):
    model, reference = small
    check_bit_for_bit(model, reference)
    float_rerun = executor.run_file(model, reference.voxels.float(), reference.coords, int8=False)
    assert compare(reference.output, float_rerun)["max_abs"] == 0.0


def test_int32_accumulation_agrees_with_fp32_sums(small):
    """The engine sums int8 products in int32; on the same input, spconv's fp32 sums of the de-quantized
    values differ from those exact sums only by fp32 rounding, in every int8 conv."""
    model, reference = small
    rows = executor.accumulation_rows(model, reference.voxels.float(), reference.coords)
    worst = max(rows, key=lambda r: r["relative"])
    print(f"int32 vs fp32 accumulation, {len(rows)} int8 convs: worst {worst}")
    assert len(rows) == 20 and worst["relative"] < 1e-6
    int32 = executor.run_file(model, reference.voxels.float(), reference.coords, accumulate="int32")
    assert compare(reference.output_int8, int32)["cosine"] > 0.99999


def test_real_keyframe_bit_for_bit():
    voxels = np.load(real_file("bevfusion_voxels_17748x5_fp16.npy")).astype(np.float32)
    coords = np.load(real_file("bevfusion_coors_17748x4_bxyz_int32.npy"))
    check_bit_for_bit(*exported([(torch.from_numpy(voxels), torch.from_numpy(coords))]))


def test_real_10_sweep_scan_bit_for_bit():
    points = read_points(real_file("nuscenes_10sweeps_points.bin"))
    check_bit_for_bit(*exported([voxelize(torch.from_numpy(points), get_config())]))


# --- what the file says for fp16 layers, and how the executor reads it ---

def test_fp16_layers_carry_no_dynamic_ranges(small):
    model, _ = small
    for node in model.graph.node:
        names = {a.name for a in node.attribute}
        ranges = {n for n in names if n.endswith("dynamic_range") or n.endswith("dynamic_ranges")}
        if node.op_type in ("SparseConvolution", "Add"):
            assert bool(ranges) == executor.is_int8(node), node.name
    assert not executor.is_int8(model.graph.node[0])  # conv0: precision fp16


def test_the_executor_reads_attributes_as_the_parser_does(small):
    """Only the exact string "int8" selects int8; an attribute of another type reads as 0 / "" / []."""
    model, reference = small
    args = (reference.voxels.float(), reference.coords)
    shouting = copy.deepcopy(model)
    for node in shouting.graph.node:
        for a in node.attribute:
            if a.name == "precision" and a.s == b"int8":
                a.s = b"INT8"  # the engine reads this as fp16: no layer is quantized
    assert torch.equal(executor.run_file(shouting, *args), reference.output)
    typed = copy.deepcopy(model)
    conv1 = typed.graph.node[1]
    a = next(a for a in conv1.attribute if a.name == "input_dynamic_range")
    conv1.attribute.remove(a)
    conv1.attribute.append(onnx.helper.make_attribute("input_dynamic_range", [a.f]))  # FLOATS, not FLOAT: reads 0
    with pytest.raises(executor.NotExecutable, match="conv1: input_dynamic_range must be finite and > 0"):
        executor.run_file(typed, *args)


def test_a_wrongly_typed_initializer_is_named(small):
    model, reference = small
    bad = copy.deepcopy(model)
    weight = next(t for t in bad.graph.initializer if t.name == "spconv4.weight")
    weight.data_type = onnx.TensorProto.FLOAT  # the engine logs an error and builds empty weights
    with pytest.raises(executor.NotExecutable, match="conv4: initializer spconv4.weight is not FLOAT16"):
        executor.run_file(bad, reference.voxels.float(), reference.coords)


def test_first_difference_names_the_first_node_that_parts():
    same = {"a": np.ones((2, 3)), "b": np.ones((2, 3)), "c": np.ones((2, 3))}
    other = dict(same, b=np.array([[1, 1, 1.1], [1, 1, 1]]), c=np.zeros((2, 3)))
    assert executor.first_difference(same, same, ["a", "b", "c"], 0.0) is None
    found = executor.first_difference(same, other, ["a", "b", "c"], 1e-6)
    assert found["node"] == "b" and found["channel"] == 2 and found["relative"] == pytest.approx(0.1)


# --- the pictures of notebook 03's int8 proof ---

def test_one_shared_scale_crushes_the_raw_voxel_columns():
    from helpers.viz.int8 import shared_scale_rows
    g = torch.Generator().manual_seed(0)
    n = 5000
    voxels = torch.stack([torch.rand(n, generator=g) * 108 - 54, torch.rand(n, generator=g) * 108 - 54,
                          torch.rand(n, generator=g) * 8 - 5, torch.randint(0, 256, (n,), generator=g).float(),
                          torch.randint(0, 10, (n,), generator=g) * 0.05], 1)  # x, y, z, intensity, 10 time-lags
    rows = {r["column"]: r for r in shared_scale_rows(voxels, 229.0)}  # the amax intensity sets: steps of 1.8
    assert rows["z (m)"]["distinct after"] <= 6 and rows["z (m)"]["distinct before"] > 1000
    assert rows["time-lag (s)"]["distinct before"] == 10 and rows["time-lag (s)"]["distinct after"] == 1
    nonzero = float((voxels[:, 4].half() != 0).float().mean())
    assert rows["time-lag (s)"]["non-zero turned 0"] == f"{nonzero:.1%}"  # every non-zero time-lag is gone
    assert rows["intensity"]["distinct after"] > 100  # the column that set the scale keeps most of its values


def test_layer_error_chart_labels_the_fp16_layer():
    from helpers.viz.int8 import layer_error_chart
    rows = [dict(node="conv0", op="SparseConvolution", precision="fp16", relative_error=0.0, cosine=1.0),
            dict(node="conv1", op="SparseConvolution", precision="int8", relative_error=0.02, cosine=0.9998),
            dict(node="add0", op="Add", precision="int8", relative_error=0.03, cosine=0.9995)]
    fig = layer_error_chart(rows)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv0", "conv1", "add0"]
    assert [t.get_text() for t in ax.texts] == ["0\n(fp16 input)"]


# --- what int8 costs, node by node, and the re-runs' outputs kept by check_file ---

def test_layer_errors_come_from_check_files_own_runs(small):
    """check_file(on_node=LayerErrors.record) gives layer_errors' rows without running the file again, each row
    the node's float and int8 outputs compared by hand; Verdict.outputs are the re-runs' outputs."""
    model, reference = small
    errors, seen = executor.LayerErrors(), {"float": {}, "int8": {}}

    def both(mode, node, y):
        errors.record(mode, node, y)
        seen[mode][node.name] = y.detach().double().flatten().numpy().copy()
    verdict = check_file(model, reference, on_node=both)
    assert verdict.code == 0 and len(errors.rows) == len(model.graph.node) == 40
    assert errors.rows == executor.layer_errors(model, reference.voxels.float(), reference.coords)  # two more runs
    for row in errors.rows:
        a, b = seen["float"][row["node"]], seen["int8"][row["node"]]
        assert row["relative_error"] == pytest.approx(np.linalg.norm(b - a) / np.linalg.norm(a), rel=1e-9, abs=0)
        assert row["cosine"] == pytest.approx(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), rel=1e-12)
    assert errors.rows[0]["precision"] == "fp16" and errors.rows[0]["relative_error"] == 0  # conv0 reads fp16
    assert errors.rows[1]["relative_error"] > 0 and errors.rows[-1]["relative_error"] > 0  # conv1 on: int8
    for mode in ("float", "int8"):
        alone = executor.run_file(model, reference.voxels.float(), reference.coords, int8=(mode == "int8"))
        assert torch.equal(verdict.outputs[mode], alone)


def test_compare_agrees_with_numpy():
    g = torch.Generator().manual_seed(2)
    a = torch.relu(torch.randn(1, 8, 30, 30, generator=g))
    b = a + 0.01 * torch.randn(a.shape, generator=g)
    x, y = a.double().numpy().ravel(), b.double().numpy().ravel()
    figures = compare(a, b)
    assert figures["cosine"] == pytest.approx(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)), rel=1e-12)
    assert figures["max_abs"] == np.abs(x - y).max()
    assert compare(a, a)["cosine"] == pytest.approx(1.0, abs=1e-15) and compare(a, a)["max_abs"] == 0.0
    assert compare(a, -a)["cosine"] == pytest.approx(-1.0, abs=1e-15)
    zeros = torch.zeros_like(a)
    assert compare(zeros, zeros)["cosine"] == 1.0 and compare(zeros, a)["cosine"] == 0.0


def test_channel_stats_agree_with_numpy_on_sparse_features_and_a_mostly_empty_map():
    g = torch.Generator().manual_seed(3)
    features = torch.relu(torch.randn(500, 16, generator=g))  # [N, C]
    bev = torch.zeros(1, 8, 20, 20)
    bev[0, :, 3:5, 7] = torch.randn(8, 2, generator=g)  # a few cells of a dense [1, C, H, W] map
    bev[0, 2, 0, 0] = float("nan")  # NaN is not skipped with the zeros
    for tensor, axes in ((features, 0), (bev, (0, 2, 3))):
        x = tensor.double().numpy()
        expected = np.stack([x.sum(axis=axes), (x * x).sum(axis=axes)])
        np.testing.assert_allclose(executor.channel_stats(tensor), expected, rtol=1e-12, atol=0)
