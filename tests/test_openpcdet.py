"""OpenPCDet's VoxelBackBone8x and VoxelResBackBone8x on KITTI: the models, their checkpoints, their export."""
from collections import Counter

import numpy as np
import pytest
import torch

from helpers import pipeline
from helpers.check.agree import check_file
from helpers.check.contract import check_contract
from helpers.checkpoint import load_checkpoint, to_spconv1_state
from helpers.config import VoxelBackBone8xConfig, get_config
from helpers.data.scene import make_scene
from helpers.data.voxelize import voxelize
from helpers.errors import WorkbookError
from helpers.export import main
from helpers.model import build_scn, place
from helpers.quant.reference import reference_run

PLAIN, RES = get_config("voxelbackbone8x-kitti"), get_config("voxelresbackbone8x-kitti")
# written out by hand from OpenPCDet's spconv_backbone.py, not read from the code under test
PLAIN_OPS = {"SparseConvolution": 12, "Add": 0, "Relu": 0, "ScatterDense": 1, "Transpose": 0, "Reshape": 1}
RES_OPS = {"SparseConvolution": 21, "Add": 8, "Relu": 8, "ScatterDense": 1, "Transpose": 0, "Reshape": 1}


def down(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def expected_grids():
    """z, y, x grids: the input, after conv2.0, conv3.0, conv4.0 (z padding 0) and conv_out."""
    grids = [[41, 1600, 1408]]  # 4 m / 0.1 m = 40 z planes + 1, 80 m / 0.05 m = 1600, 70.4 m / 0.05 m = 1408
    for pad in ([1, 1, 1], [1, 1, 1], [0, 1, 1]):
        grids.append([down(n, 3, 2, p) for n, p in zip(grids[-1], pad)])
    grids.append([down(n, k, s, 0) for n, k, s in zip(grids[-1], (3, 1, 1), (2, 1, 1))])
    return grids


def test_kitti_grid():
    assert PLAIN.sparse_shape == [41, 1600, 1408] and PLAIN.grid_counts == [1408, 1600, 40]
    assert expected_grids() == [[41, 1600, 1408], [21, 800, 704], [11, 400, 352], [5, 200, 176], [2, 200, 176]]
    with pytest.raises(WorkbookError, match="zyx"):
        VoxelBackBone8xConfig(layout="xyz")


def test_parameter_counts_agree_with_an_independent_count():
    bn = lambda c: 2 * c  # noqa: E731  gamma and beta
    plain = 27 * 4 * 16 + bn(16) + 27 * 16 * 16 + bn(16)  # conv_input, conv1.0
    res = 27 * 4 * 16 + bn(16) + 2 * 2 * (27 * 16 * 16 + 16 + bn(16))  # conv_input, two biased basic blocks
    for cin, cout in ((16, 32), (32, 64), (64, 64)):
        plain += 27 * cin * cout + bn(cout) + 2 * (27 * cout * cout + bn(cout))
    for cin, cout in ((16, 32), (32, 64), (64, 128)):
        res += 27 * cin * cout + bn(cout) + 2 * 2 * (27 * cout * cout + cout + bn(cout))
    plain += 3 * 64 * 128 + bn(128)  # conv_out, kernel 3 x 1 x 1
    res += 3 * 128 * 128 + bn(128)
    assert sum(p.numel() for p in build_scn(PLAIN).parameters()) == plain == 711_872
    assert sum(p.numel() for p in build_scn(RES).parameters()) == res == 2_694_880


def test_state_dicts_have_openpcdet_names_and_shapes():
    plain = {k: list(v.shape) for k, v in build_scn(PLAIN).state_dict().items()}
    assert type(build_scn(PLAIN)).__name__ == "VoxelBackBone8x"
    assert plain["conv_input.0.weight"] == [16, 3, 3, 3, 4]  # [C_out, z, y, x, C_in]
    assert plain["conv1.0.0.weight"] == [16, 3, 3, 3, 16] and plain["conv1.0.1.running_var"] == [16]
    assert plain["conv2.0.0.weight"] == [32, 3, 3, 3, 16] and plain["conv2.2.0.weight"] == [32, 3, 3, 3, 32]
    assert plain["conv4.0.0.weight"] == [64, 3, 3, 3, 64] and plain["conv_out.0.weight"] == [128, 3, 1, 1, 64]
    assert {k.split(".")[0] for k in plain} == {"conv_input", "conv1", "conv2", "conv3", "conv4", "conv_out"}
    res = {k: list(v.shape) for k, v in build_scn(RES).state_dict().items()}
    assert res["conv1.1.conv2.bias"] == [16] and res["conv2.0.0.weight"] == [32, 3, 3, 3, 16]
    assert res["conv2.2.bn1.weight"] == [32] and res["conv4.0.0.weight"] == [128, 3, 3, 3, 64]
    assert res["conv_out.0.weight"] == [128, 3, 1, 1, 128]
    assert len([k for k, v in res.items() if len(v) == 5]) == 21


@pytest.mark.parametrize("cfg", [PLAIN, RES], ids=["plain", "res"])
def test_openpcdet_checkpoint_round_trip(tmp_path, cfg):
    source = build_scn(cfg)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    state = to_spconv1_state(source)  # backbone_3d.*, spconv 1.x kernels [z, y, x, C_in, C_out]
    assert all(k.startswith("backbone_3d.") for k in state)
    state["dense_head.conv_cls.weight"] = torch.ones(3)  # the rest of the detector is ignored
    path = tmp_path / "second.pth"
    torch.save({"model_state": state, "epoch": 80}, path)  # as OpenPCDet's train_utils saves it
    target = load_checkpoint(build_scn(cfg), path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def kitti_scene(seed=0):
    """A small synthetic scan cut to KITTI's front view: x, y, z, reflectance."""
    return make_scene("small", seed=seed)[:, :4]


@pytest.fixture(scope="module", params=[PLAIN, RES], ids=["plain", "res"])
def exported(request, tmp_path_factory):
    cfg = request.param
    voxels, coords = voxelize(torch.from_numpy(kitti_scene()), cfg)
    batches = [(voxels, coords), voxelize(torch.from_numpy(kitti_scene(1)), cfg)]
    model = pipeline.prepare_scn(place(build_scn(cfg), "cpu"), batches, progress=False)
    path = tmp_path_factory.mktemp("pcdet") / f"{cfg.network}.onnx"
    return cfg, pipeline.export_scn(model, voxels, coords, path), model, voxels, coords


def test_graph_contract_and_both_reruns(exported):
    cfg, result, model, voxels, coords = exported
    ops = PLAIN_OPS if cfg is PLAIN else RES_OPS
    nodes = result.tracer.nodes
    assert Counter(n.op for n in nodes) == {k: v for k, v in ops.items() if v}
    assert len(nodes) == sum(ops.values()) == (14 if cfg is PLAIN else 39)
    assert voxels.shape[1] == 4 and list(result.output.shape) == [1, 256, 200, 176]
    convs = [n for n in nodes if n.op == "SparseConvolution"]
    grids = [convs[0].attributes["input_spatial_shape"]]
    grids += [n.attributes["output_spatial_shape"] for n in convs if not n.attributes["subm"]]
    assert grids == expected_grids()
    assert nodes[-2].attributes == dict(input_spatial_shape=[2, 200, 176], format="zyx",
                                        output_shape=[1, 128, 2, 200, 176])
    assert nodes[-1].attributes["dims"] == [1, 256, 200, 176]
    keys = [n.attributes["rulebook"] for n in convs]
    first = "subm" if cfg is PLAIN else "res"
    assert keys[-1] == "spconv_down2" and keys[:2] == ["subm1", f"{first}1"] and "spconv4" in keys
    assert check_contract(result.path, op_counts=ops) == []
    verdict = check_file(result.path, reference_run(model, voxels, coords), op_counts=ops)
    assert verdict.code == 0, verdict.lines
    assert verdict.figures["float"]["max_abs"] == 0.0 and verdict.figures["int8"]["max_abs"] == 0.0


@pytest.mark.parametrize("network, nodes", [("voxelbackbone8x", 14), ("voxelresbackbone8x", 39)])
def test_command_line_exports_a_kitti_bin(tmp_path, capsys, network, nodes):
    scan = tmp_path / "000000.bin"
    kitti_scene()[::2].astype(np.float32).tofile(scan)  # float32 rows of x, y, z, reflectance
    out = tmp_path / f"{network}.onnx"
    assert main(["--network", network, "--points", str(scan), "--columns", "4", "--calibrate", "1", "--device",
                 "cpu", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"SCN {network}-kitti (zyx)" in printed and "grid [41, 1600, 1408]" in printed
    assert f"wrote {out}: {nodes} nodes" in printed and "output [1, 256, 200, 176]" in printed
    assert "contract check: passed" in printed and "DISAGREES" not in printed


@pytest.mark.parametrize("network", ["voxelbackbone8x", "voxelresbackbone8x"])
def test_command_line_refuses_xyz_for_a_zyx_network(tmp_path, capsys, network):
    out = tmp_path / "x.onnx"
    assert main(["--network", network, "--layout", "xyz", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"layout='xyz' is not supported by {network}; expected one of ['zyx']" in err and not out.exists()
    assert err.count("\n") == 1
