"""The support report (helpers.support) and the exporter's refusals: the same one line, never an AssertionError."""
import pytest
import spconv.pytorch as spconv
import torch
from torch import nn

from helpers import pipeline
from helpers.errors import WorkbookError
from helpers.export import main
from helpers.model import place
from helpers.quant.fuse import fuse
from helpers.quant.modules import quantize_scn
from helpers.quant.precision import set_precision
from helpers.support import check_support, conv_problem
from tests.test_own_network import TinyZyxBackbone, block, tiny_model, zyx_voxels


class WithInverse(TinyZyxBackbone):
    """A U-Net-like tail: the stride-2 stage is undone by an inverse conv on its rulebook."""

    def __init__(self):
        super().__init__()
        self.up = spconv.SparseSequential(spconv.SparseInverseConv3d(32, 16, 3, indice_key="spconv2", bias=False),
                                          nn.BatchNorm1d(16), nn.ReLU())
        del self.conv_out  # the inverse conv ends this network

    def forward(self, voxel_features, coors, batch_size=1):
        x = spconv.SparseConvTensor(voxel_features, coors, self.sparse_shape, batch_size)
        x = self.up(self.conv2(self.conv_input(x)))
        dense = x.dense()
        n, c, d, h, w = dense.shape
        return dense.view(n, c * d, h, w)


class WithPool(TinyZyxBackbone):
    def __init__(self):
        super().__init__()
        self.pool = spconv.SparseMaxPool3d(2, 2)

    def forward(self, voxel_features, coors, batch_size=1):
        x = spconv.SparseConvTensor(voxel_features, coors, self.sparse_shape, batch_size)
        x = self.conv_out(self.conv2(self.pool(self.conv_input(x))))
        return x.dense().flatten(1, 2)


class WithConcat(TinyZyxBackbone):
    def __init__(self):
        super().__init__()
        self.conv2 = spconv.SparseSequential(block(32, 32, 3, stride=2, padding=1, key="spconv2"))

    def forward(self, voxel_features, coors, batch_size=1):
        x = spconv.SparseConvTensor(voxel_features, coors, self.sparse_shape, batch_size)
        x = self.conv_input(x)
        x = x.replace_feature(torch.cat([x.features, x.features], 1))  # [N, 32]: two branches side by side
        x = self.conv_out(self.conv2(x))
        return x.dense().flatten(1, 2)


class SharedRelu(TinyZyxBackbone):
    def __init__(self):
        super().__init__()
        setattr(self.conv_out, "2", self.conv2[0][2])  # one ReLU module in two places


def report_of(model):
    voxels, coords = zyx_voxels()
    return check_support(place(model.eval(), "cpu"), voxels, coords)


def test_a_supported_network_lists_every_module():
    report = report_of(tiny_model())
    assert report.ok
    lines = str(report).splitlines()
    verdicts = {m.path: (m.verdict, m.note) for m in report.modules}
    assert verdicts["conv_input.0"] == ("exported", "SparseConvolution")
    assert verdicts["conv_input.1"] == ("fused", "folded into conv_input.0")
    assert verdicts["conv_input.2"] == ("fused", "into the conv before it (activation='ReLU')")
    assert [m.verdict for m in report.modules].count("exported") == 4  # 4 convs
    assert [m.verdict for m in report.modules].count("fused") == 8  # 4 BN + 4 ReLU
    assert lines[0] == "TinyZyxBackbone: 12 modules (4 exported, 8 fused): every one can be exported"
    assert "  exported        conv2.0.0 (SparseConv3d): SparseConvolution" in lines


@pytest.mark.parametrize("network, path, words", [
    (WithInverse, "up.0", "an inverse conv goes back to an earlier rulebook's sites"),
    (WithPool, "pool", "sparse pooling: the engine has no pooling op"),
    (WithConcat, "conv2.0.0", "its input is made by torch.cat of features"),
    (SharedRelu, "conv2.0.2", "one ReLU module used 2 times"),
])
def test_what_the_engine_cannot_carry_is_named_in_the_report_and_refused_by_the_exporter(network, path, words):
    torch.manual_seed(0)
    report = report_of(network())
    assert not report.ok and report.unsupported[0].path == path and words in report.unsupported[0].note
    assert f"unsupported     {path} (" in str(report)
    voxels, coords = zyx_voxels()
    with pytest.raises(WorkbookError, match=f"module '{path}' .* cannot be exported: {words}") as caught:
        pipeline.prepare_scn(place(network().eval(), "cpu"), [(voxels, coords)], progress=False)
    assert "\n" not in str(caught.value)


def test_the_tracer_refuses_an_inverse_conv_with_the_same_words_not_an_assertion():
    torch.manual_seed(0)
    voxels, coords = zyx_voxels()
    model = quantize_scn(place(WithInverse().eval(), "cpu"))
    model = set_precision(fuse(model, voxels, coords), int8=False)  # prepared by hand: no support report ran
    with pytest.raises(WorkbookError, match=r"module 'up.0' \(QuantSparseConv\) cannot be exported: an inverse conv"):
        pipeline.export_scn(model, voxels, coords)


def test_weights_that_overflow_fp16_after_folding_are_unsupported():
    model = tiny_model()
    bn = model.conv2[1][1]
    with torch.no_grad():
        bn.running_var.fill_(1e-12)
        bn.eps = 1e-12  # scale = gamma / sqrt(2e-12), about 7e5: the folded weights pass 65504
    report = report_of(model)
    assert [m.path for m in report.unsupported] == ["conv2.1.1"]
    assert "folded into conv2.1.0, its weights reach" in report.unsupported[0].note
    assert "beyond fp16's 65504" in report.unsupported[0].note


def test_groups_and_transposed_convs_are_named():
    conv = spconv.SubMConv3d(4, 4, 3)
    assert conv_problem(conv) == ""
    conv.groups = 2  # spconv 2.3 refuses groups when built; a converted network may still carry the attribute
    assert conv_problem(conv).startswith("groups=2: the engine's parser never reads `groups`")
    assert "never reads `transposed`" in conv_problem(spconv.SparseConvTranspose3d(4, 4, 3))


def test_modules_the_forward_never_calls_are_listed():
    model = tiny_model()
    model.spare = nn.Linear(3, 3)
    report = report_of(model)
    assert report.ok
    assert str(report.modules[-1]) == "not called      spare (Linear): the forward never calls it: it writes nothing"


def test_command_line_check_only_prints_the_report_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "scn.onnx"
    args = ["--network", "centerpoint", "--check-only", "--scene", "small", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "SpMiddleResNetFHD: " in printed and "every one can be exported" in printed
    assert "  exported        conv2.0 (SparseConv3d): SparseConvolution" in printed
    assert "  fused           conv1.0.bn1 (BatchNorm1d): folded into conv1.0.conv1" in printed
    assert "  exported        conv1.0.relu (ReLU): Relu" in printed
    assert not out.exists()
