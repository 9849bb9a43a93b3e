"""CenterPoint's SpMiddleResNetFHD: the model, its checkpoints and its export through the same exporter."""
import inspect
from collections import Counter

import numpy as np
import pytest
import torch

from helpers import pipeline
from helpers.check.agree import check_file
from helpers.check.compare import compare
from helpers.check.contract import check_contract
from helpers.check.rerun import run_graph
from helpers.checkpoint import load_checkpoint, to_spconv1_state
from helpers.config import CenterPointConfig, get_config
from helpers.data.scene import make_scene
from helpers.errors import WorkbookError
from helpers.export import main
from helpers.model import build_scn, place
from helpers.quant.reference import reference_run
from helpers.trace import handlers, onnx_build, registry, tracer
from helpers.trace.tracer import Node
from helpers.viz.side_by_side import op_count_rows, stage_rows
from tests.conftest import random_voxels

CFG = get_config("centerpoint-0075")
# written out by hand from det3d's scn.py, not read from the code under test
CHANNELS = [16, 32, 64, 128]
CENTERPOINT_OPS = {"SparseConvolution": 21, "Add": 8, "Relu": 8, "ScatterDense": 1, "Transpose": 0, "Reshape": 1}


def build_centerpoint(cfg):
    model = build_scn(cfg)
    assert type(model).__name__ == "SpMiddleResNetFHD"  # the config chooses the network
    return model


def down(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def expected_grids():
    """z, y, x grids: the input, after conv2.0, conv3.0, conv4.0 (z padding 0) and extra_conv."""
    grids = [[41, 1440, 1440]]  # sparse shape: 8 m / 0.2 m = 40 z planes + 1, 108 m / 0.075 m = 1440
    for pad in ([1, 1, 1], [1, 1, 1], [0, 1, 1]):
        grids.append([down(n, 3, 2, p) for n, p in zip(grids[-1], pad)])
    grids.append([down(n, k, s, 0) for n, k, s in zip(grids[-1], (3, 1, 1), (2, 1, 1))])
    return grids


def test_grids_and_parameter_count_agree_with_an_independent_count():
    assert CFG.sparse_shape == [41, 1440, 1440] and CFG.grid_xyz == [1440, 1440, 41]
    assert expected_grids() == [[41, 1440, 1440], [21, 720, 720], [11, 360, 360], [5, 180, 180], [2, 180, 180]]
    bn = lambda c: 2 * c  # noqa: E731  gamma and beta (running statistics are buffers)
    block = lambda c: 2 * (27 * c * c + c + bn(c))  # noqa: E731  two biased SubM convs + two BN
    count = 27 * 5 * 16 + bn(16) + 2 * block(16)
    for cin, cout in zip(CHANNELS, CHANNELS[1:]):
        count += 27 * cin * cout + bn(cout) + 2 * block(cout)
    count += 3 * 128 * 128 + bn(128)  # extra_conv, kernel 3 x 1 x 1
    model = build_centerpoint(CFG)
    assert sum(p.numel() for p in model.parameters()) == count == 2_695_312


def test_state_dict_has_centerpoint_checkpoint_names_and_shapes():
    state = build_centerpoint(CFG).state_dict()
    shapes = {k: list(v.shape) for k, v in state.items()}
    assert shapes["conv_input.0.weight"] == [16, 3, 3, 3, 5]  # [C_out, z, y, x, C_in]
    assert shapes["conv1.1.conv2.bias"] == [16]
    assert shapes["conv2.0.weight"] == [32, 3, 3, 3, 16]
    assert shapes["conv3.4.bn2.running_var"] == [64]
    assert shapes["conv4.3.conv1.weight"] == [128, 3, 3, 3, 128]
    assert shapes["extra_conv.0.weight"] == [128, 3, 1, 1, 128]  # kernel (3, 1, 1) in z, y, x
    assert {k.split(".")[0] for k in state} == {"conv_input", "conv1", "conv2", "conv3", "conv4", "extra_conv"}
    assert len([k for k in state if k.endswith("weight") and state[k].dim() == 5]) == 21


def test_only_zyx():
    with pytest.raises(WorkbookError, match="zyx"):
        CenterPointConfig(layout="xyz")


def det3d_checkpoint(model):
    """What a det3d CenterPoint .pth holds: spconv 1.x weights under backbone., beside the rest of the detector."""
    state = to_spconv1_state(model)
    assert all(k.startswith("backbone.") for k in state)
    assert list(state["backbone.extra_conv.0.weight"].shape) == [3, 1, 1, 128, 128]  # [z, y, x, C_in, C_out]
    state["neck.blocks.0.1.weight"] = torch.ones(3)  # other parts of the detector are ignored
    state["bbox_head.shared_conv.0.weight"] = torch.ones(3)
    return {"state_dict": state, "meta": {}}


def test_checkpoint_round_trip_spconv1_layout(tmp_path):
    source = build_centerpoint(CFG)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not what a fresh model holds
    path = tmp_path / "centerpoint.pth"
    torch.save(det3d_checkpoint(source), path)
    target = load_checkpoint(build_centerpoint(CFG), path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    voxels, coords = random_voxels(CFG, n=300)
    with torch.no_grad():
        assert torch.equal(place(source, "cpu")(voxels, coords), place(target, "cpu")(voxels, coords))


def test_a_bevfusion_checkpoint_is_not_a_centerpoint_one(tmp_path):
    path = tmp_path / "bevfusion.pth"
    torch.save(to_spconv1_state(build_scn(get_config())), path)
    with pytest.raises(WorkbookError, match="missing"):
        load_checkpoint(build_centerpoint(CFG), path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The int8 CenterPoint graph of a small input, prepared and exported by the BEVFusion code path."""
    voxels, coords = random_voxels(CFG, n=1200)
    batches = [(voxels, coords), random_voxels(CFG, n=1200, seed=1)]
    model = pipeline.prepare_scn(place(build_centerpoint(CFG), "cpu"), batches, progress=False)
    path = tmp_path_factory.mktemp("cp") / "centerpoint.onnx"
    return pipeline.export_scn(model, voxels, coords, path), model, voxels, coords


def test_graph_nodes_shapes_and_output(exported):
    result, _, voxels, _ = exported
    nodes = result.tracer.nodes
    assert Counter(n.op for n in nodes) == {k: v for k, v in CENTERPOINT_OPS.items() if v}
    assert len(nodes) == 39 and nodes[-1].outputs == ["39"]
    assert list(result.output.shape) == [1, 256, 180, 180]
    convs = [n for n in nodes if n.op == "SparseConvolution"]
    grids = [convs[0].attributes["input_spatial_shape"]]
    grids += [n.attributes["output_spatial_shape"] for n in convs if not n.attributes["subm"]]
    assert grids == expected_grids()
    scatter, reshape = nodes[-2], nodes[-1]
    assert scatter.attributes == dict(input_spatial_shape=[2, 180, 180], format="zyx", output_shape=[1, 128, 2, 180, 180])
    assert reshape.op == "Reshape" and reshape.attributes["dims"] == [1, 256, 180, 180]
    subm_keys = [n.attributes["rulebook"] for n in convs if n.attributes["subm"]]
    assert subm_keys == ["res0"] * 5 + ["res1"] * 4 + ["res2"] * 4 + ["res3"] * 4
    assert convs[0].attributes["precision"] == "fp16" and convs[-1].attributes["output_precision"] == "fp16"
    assert convs[-1].attributes["kernel_size"] == [3, 1, 1] and convs[-1].attributes["stride"] == [2, 1, 1]
    assert convs[0].attributes["input_shape"] == [len(voxels), 5]


def test_contract_and_float_rerun(exported):
    result, _, voxels, coords = exported
    assert check_contract(result.path, op_counts=CENTERPOINT_OPS) == []
    diff = compare(result.output, run_graph(result.path, voxels, coords))
    assert diff["max_abs"] <= 1e-4 and diff["cosine"] > 0.99999


def test_the_exporter_has_no_network_specific_branch():
    for module in (handlers, onnx_build, registry, tracer):
        source = inspect.getsource(module)
        assert "centerpoint" not in source.lower() and "SpMiddleResNetFHD" not in source
        assert "SparseEncoder" not in source  # no dispatch on the network's class either


def test_command_line_exports_centerpoint(tmp_path, capsys):
    scan = tmp_path / "scan.npy"
    np.save(scan, make_scene("small")[::8])  # 2,500 points: a few seconds on the CPU
    out = tmp_path / "centerpoint.onnx"
    args = ["--network", "centerpoint", "--points", str(scan), "--calibrate", "1", "--device", "cpu", "--quiet"]
    assert main(args + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "SCN centerpoint-0075 (zyx)" in printed and "grid [41, 1440, 1440]" in printed
    assert "39 nodes (21 SparseConvolution, 8 Add, 8 Relu, 1 ScatterDense, 1 Reshape)" in printed
    assert "output [1, 256, 180, 180]" in printed
    assert "contract check: passed" in printed and "DISAGREES" not in printed
    assert "float re-run of the file vs the PyTorch output: cosine 1.000000, max abs 0 (agrees)" in printed
    assert "int8 re-run of the file vs the fake-quant PyTorch output: cosine 1.000000, max abs 0 (agrees)" in printed


@pytest.mark.parametrize("extra, message", [(["--grid", "bevfusion-0075"], "is a bevfusion grid"),
                                            (["--layout", "xyz"], "layout='xyz' is not supported by centerpoint")])
def test_command_line_rejects_a_grid_or_layout_of_the_other_network(tmp_path, capsys, extra, message):
    out = tmp_path / "x.onnx"
    assert main(["--network", "centerpoint", "--out", str(out)] + extra) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_side_by_side_tables(exported):
    result = exported[0]
    nodes = result.tracer.nodes
    bev_like = nodes[:-1] + [Node("Transpose", "transpose0", ["38"], ["39"], {"dims": [0, 1, 2, 4, 3]}),
                             Node("Reshape", "reshape0", ["39"], ["40"], {"dims": [1, 256, 180, 180]})]
    graphs = {"CenterPoint": nodes, "with a Transpose": bev_like}
    counts = {r["op"]: (r["CenterPoint"], r["with a Transpose"]) for r in op_count_rows(graphs)}
    assert counts == {"SparseConvolution": (21, 21), "Add": (8, 8), "Relu": (8, 8), "ScatterDense": (1, 1),
                      "Transpose": (0, 1), "Reshape": (1, 1), "nodes": (39, 40)}
    rows = stage_rows(graphs)
    assert [r["stage"] for r in rows] == ["input"] + [f"stride conv {i}" for i in (1, 2, 3, 4)] + \
        ["ScatterDense", "Transpose", "Reshape"]
    grids = [r["CenterPoint"].split(" · ")[0] for r in rows[:5]]
    assert grids == [" × ".join(map(str, g)) for g in expected_grids()]
    assert rows[1]["CenterPoint"].endswith("(conv2.0)") and rows[4]["CenterPoint"].endswith("(extra_conv.0)")
    assert rows[6]["CenterPoint"] == "-" and rows[6]["with a Transpose"] == "dims [0, 1, 2, 4, 3]"
    assert rows[7]["CenterPoint"] == "[1, 256, 180, 180]"


def test_int8_faithful_rerun_is_the_fake_quant_model(exported):
    """helpers.check.int8 runs the file as the engine's int8 build would: bit for bit the fake-quant model on the CPU."""
    result, model, voxels, coords = exported
    reference = reference_run(model, voxels, coords)
    verdict = check_file(result.path, reference, op_counts=CENTERPOINT_OPS)
    assert verdict.code == 0, verdict.lines
    assert verdict.figures["float"]["max_abs"] == 0.0 and verdict.figures["int8"]["max_abs"] == 0.0
    assert not torch.equal(reference.output_int8, reference.output)  # int8 did change the numbers
    assert compare(reference.output, result.output)["max_abs"] == 0.0
