"""A network the workbook has never seen, written as OpenPCDet writes its backbones (plain spconv modules,
zyx coords, spatial shape [z, y, x], ending in .dense() and a view to BEV), goes through the same
exporter: the file's layout comes from the network, never from a default."""
import numpy as np
import onnx
import pytest
import spconv.pytorch as spconv
import torch
from torch import nn

from helpers import pipeline
from helpers.check.agree import check_file
from helpers.check.contract import check_contract
from helpers.errors import WorkbookError
from helpers.layout import layout_from_shape, network_layout
from helpers.model import place
from helpers.onnx_file import attributes
from helpers.quant.reference import reference_run

SHAPE = [11, 64, 48]  # z, y, x: 11 planes, 64 rows, 48 columns


def block(cin, cout, kernel, stride=1, padding=0, subm=False, key=None):
    conv = (spconv.SubMConv3d(cin, cout, kernel, padding=padding, bias=False, indice_key=key) if subm else
            spconv.SparseConv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False, indice_key=key))
    return spconv.SparseSequential(conv, nn.BatchNorm1d(cout, eps=1e-3, momentum=0.01), nn.ReLU())


class TinyZyxBackbone(nn.Module):
    """zyx in, [1, 64, 32, 24] BEV out: conv_input, one stride-2 stage, a z squeeze, dense + view."""

    def __init__(self, sparse_shape=SHAPE):
        super().__init__()
        self.sparse_shape = sparse_shape  # [z, y, x], as OpenPCDet's grid_size[::-1] + [1, 0, 0]
        self.conv_input = block(4, 16, 3, padding=1, subm=True, key="subm1")
        self.conv2 = spconv.SparseSequential(block(16, 32, 3, stride=2, padding=1, key="spconv2"),
                                             block(32, 32, 3, padding=1, subm=True, key="subm2"))
        self.conv_out = block(32, 32, (3, 1, 1), stride=(2, 1, 1), key="spconv_down2")  # z 6 -> 2

    def forward(self, voxel_features, coors, batch_size=1):
        x = spconv.SparseConvTensor(voxel_features, coors, self.sparse_shape, batch_size)
        x = self.conv_out(self.conv2(self.conv_input(x)))
        dense = x.dense()  # [1, 32, 2, 32, 24]: N, C, Z, Y, X
        n, c, d, h, w = dense.shape
        return dense.view(n, c * d, h, w)  # [1, 64, 32, 24]


def tiny_model():
    torch.manual_seed(0)
    model = TinyZyxBackbone().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):  # statistics that make folding them matter
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return place(model, "cpu")


def zyx_voxels(n=600, seed=0, shape=SHAPE):
    """`n` distinct (0, z, y, x) rows inside `shape` and their 4 features."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(int(np.prod(shape)), n, replace=False)
    zyx = np.stack(np.unravel_index(flat, shape), 1)
    coords = np.concatenate([np.zeros((n, 1), np.int64), zyx], 1).astype(np.int32)
    return torch.from_numpy(rng.normal(size=(n, 4)).astype(np.float32)), torch.from_numpy(coords)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    voxels, coords = zyx_voxels()
    model = pipeline.prepare_scn(tiny_model(), [(voxels, coords), zyx_voxels(seed=1)], progress=False)
    path = tmp_path_factory.mktemp("own") / "tiny.onnx"
    return pipeline.export_scn(model, voxels, coords, path), model, voxels, coords


def test_the_layout_is_read_from_the_spatial_shape():
    assert layout_from_shape([41, 1600, 1408]) == "zyx" and layout_from_shape([1440, 1440, 41]) == "xyz"
    assert layout_from_shape([64, 11, 48]) is None and layout_from_shape([32, 32, 32]) is None
    assert network_layout(tiny_model()) == "zyx"


def test_a_zyx_network_exports_with_format_zyx_and_passes_every_check(exported):
    result, model, voxels, coords = exported
    scatter = [n for n in result.tracer.nodes if n.op == "ScatterDense"][0]
    assert scatter.attributes == dict(input_spatial_shape=[2, 32, 24], format="zyx", output_shape=[1, 32, 2, 32, 24])
    assert list(result.output.shape) == [1, 64, 32, 24]
    assert check_contract(result.path) == []
    verdict = check_file(result.path, reference_run(model, voxels, coords))
    assert verdict.code == 0, verdict.lines
    assert verdict.figures["float"]["max_abs"] <= 1e-4 and verdict.figures["int8"]["max_abs"] == 0.0


def test_a_stated_layout_that_contradicts_the_network_is_refused_before_any_work(tmp_path):
    voxels, coords = zyx_voxels()
    model = tiny_model()
    with pytest.raises(WorkbookError, match=r"layout='xyz' contradicts TinyZyxBackbone: its spatial shape "
                                            r"\[11, 64, 48\] has z .* first.*pass layout='zyx'"):
        pipeline.prepare_scn(model, [(voxels, coords)], progress=False, layout="xyz")
    with pytest.raises(WorkbookError, match="contradicts"):
        pipeline.export_scn(model, voxels, coords, tmp_path / "x.onnx", layout="xyz")
    assert not (tmp_path / "x.onnx").exists()


def test_coords_that_do_not_fit_the_spatial_shape_are_refused():
    voxels, coords = zyx_voxels()
    xyz = coords[:, [0, 3, 2, 1]]  # x up to 47 in the z column (11 planes)
    with pytest.raises(WorkbookError, match=r"look like xyz rows .* reorder them"):
        pipeline.prepare_scn(tiny_model(), [(voxels, xyz)], progress=False)
    outside = coords.clone()
    outside[0, 2] = 64  # one row past the last y row
    with pytest.raises(WorkbookError, match=r"column 2 \(y\) spans .*64, outside the grid's 0..63"):
        pipeline.prepare_scn(tiny_model(), [(voxels, coords), (voxels, outside)], progress=False)


def test_a_network_that_does_not_show_its_layout_must_be_told():
    model = tiny_model()
    model.sparse_shape = [32, 32, 32]  # no shortest axis
    with pytest.raises(WorkbookError, match=r"cannot tell which order .* state it: layout='zyx'"):
        network_layout(model)
    assert network_layout(model, "zyx") == "zyx"


def test_a_hand_edited_scatter_format_fails_the_contract_check(exported, tmp_path):
    proto = onnx.load(str(exported[0].path))
    scatter = [n for n in proto.graph.node if n.op_type == "ScatterDense"][0]
    for attribute in scatter.attribute:
        if attribute.name == "format":
            attribute.s = b"xyz"
    assert attributes(scatter)["format"] == "xyz"
    problems = check_contract(proto)
    assert problems == ["node scatter0 (ScatterDense): format 'xyz', but the BEV view folds axis 0 of [2, 32, 24] (z) "
                        "into the channels, so the coords are zyx; expected format 'zyx'"]


def test_a_chain_whose_shapes_disagree_fails_the_contract_check(exported):
    proto = onnx.load(str(exported[0].path))
    conv = [n for n in proto.graph.node if n.op_type == "SparseConvolution"][1]  # the stride-2 conv
    for attribute in conv.attribute:
        if attribute.name == "input_spatial_shape":
            attribute.ints[:] = [48, 64, 11]  # the grid given in the other order
    assert any("conv1 (SparseConvolution): input_spatial_shape [48, 64, 11] but its input lives on [11, 64, 48]" in p
               for p in check_contract(proto))
