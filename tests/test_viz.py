"""The pictures and widgets of notebook 03, on a real trace of the 'small' synthetic scene (default grid)."""
import contextlib
import io

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from helpers.config import get_config
from helpers.data.scene import make_scene
from helpers.data.voxelize import voxelize
from helpers.errors import WorkbookError
from helpers.model import build_scn, place, spatial_shapes
from helpers.pipeline import export_scn, prepare_scn
from helpers.quant.ranges import amax_table, dynamic_ranges
from helpers.viz.pictures import (bev_map, block_sum, histograms, next_conv_amax, occupancy_grid, occupancy_image,
                                  stage_chart)
from helpers.viz.recorder import StageRecorder
from helpers.viz.stepper import node_html, node_stepper, nodes_table_html, tensor_map_html


@pytest.fixture(scope="module")
def trace():
    """(prepared model, recorder, export result, printed node lines) for the small scene, int8, on the CPU."""
    cfg = get_config()
    batches = [voxelize(torch.from_numpy(make_scene("small", seed=s)), cfg) for s in range(2)]
    model = prepare_scn(place(build_scn(cfg), "cpu"), batches, int8=True, progress=False)
    recorder = StageRecorder(print_nodes=True)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), recorder.watch(model):
        result = export_scn(model, *batches[0], on_node=recorder)
    return model, recorder, result, printed.getvalue().splitlines(), batches


def test_recorder_sees_every_node_in_trace_order(trace):
    _, recorder, result, printed, _ = trace
    assert len(recorder.records) == 40
    assert [r.name for r in recorder.records] == [n.name for n in result.tracer.nodes]
    assert printed == [str(n) for n in result.tracer.nodes]  # print_nodes prints each node as it comes
    conv5 = recorder.records[9]
    assert (conv5.name, conv5.inputs, conv5.outputs) == ("conv5", ["9"], ["10"])
    assert conv5.initializers == ["spconv5.weight", "spconv5.bias"]
    assert conv5.spatial == ([1440, 1440, 41], [720, 720, 21])
    assert conv5.module == "encoder_layers.encoder_layer1.2.0"
    add0 = recorder.records[3]
    assert add0.spatial == ([1440, 1440, 41], [1440, 1440, 41]) and add0.voxels == recorder.records[2].voxels
    assert recorder.records[-1].spatial[1] == [1, 256, 180, 180] and recorder.records[-1].voxels == 0


def test_stage_outputs_have_the_expected_grids_and_samples(trace):
    _, recorder, result, _, batches = trace
    g = spatial_shapes(get_config())  # [1440,1440,41] [720,720,21] [360,360,11] [180,180,5] [180,180,2]
    assert recorder.spatial_shapes() == [g[0], g[1], g[2], g[3], g[3], g[4]]
    assert [s.node for s in recorder.stages] == ["conv0", "conv5", "conv10", "conv15", "relu7", "conv20"]
    assert recorder.stages[0].voxels == len(batches[0][0])  # a submanifold conv keeps the input's sites
    voxels_of = {r.name: r.voxels for r in recorder.records}
    for stage in recorder.stages:
        assert stage.voxels == voxels_of[stage.node] == len(stage.xy)
        assert stage.xy.dtype == np.int32 and (stage.xy >= 0).all()
        assert (stage.xy < np.array(stage.spatial_shape[:2])).all()
        assert stage.values.dtype == np.float32 and 0 < len(stage.values) <= 20000
    assert (recorder.stages[0].xy == batches[0][1][:, 1:3].numpy()).all()  # conv_input keeps the voxel order


def test_watching_adds_no_node_and_leaves_no_hook(trace, tmp_path):
    model, recorder, result, _, batches = trace
    plain = export_scn(model, *batches[0])
    assert plain.model.SerializeToString(deterministic=True) == result.model.SerializeToString(deterministic=True)
    assert all(not m._forward_hooks for m in model.modules())
    again = StageRecorder()
    with again.watch(model):  # a re-run gives the same recording
        export_scn(model, *batches[0], on_node=again)
    assert [s.voxels for s in again.stages] == [s.voxels for s in recorder.stages]
    assert all((a.values == b.values).all() for a, b in zip(again.stages, recorder.stages))


def test_figures_have_one_axis_per_picture(trace):
    model, recorder, result, _, _ = trace
    assert isinstance(stage_chart(recorder), Figure) and len(stage_chart(recorder).axes) == 1
    assert len(occupancy_grid(recorder).axes) == 6
    assert len(histograms(recorder, amax_table(model)).axes) == 6
    assert len(bev_map(result.output).axes) == 2  # the image and its colour bar


def test_histograms_mark_the_next_convs_input_amax(trace):
    model, recorder, _, _, _ = trace
    rows = amax_table(model)
    first = model.encoder_layers.encoder_layer1[0].conv1
    amax = dynamic_ranges(model)[first]["input_dynamic_range"]
    assert next_conv_amax(recorder, recorder.stages[0], rows) == pytest.approx(amax)
    assert next_conv_amax(recorder, recorder.stages[-1], rows) is None  # conv_out: nothing after it
    fig = histograms(recorder, rows)
    red_lines = [len([l for l in ax.lines if l.get_color() == "#cc0000"]) for ax in fig.axes]
    assert red_lines == [2, 2, 2, 2, 2, 0]


def test_occupancy_image_counts_every_voxel(trace):
    _, recorder, _, _, _ = trace
    for stage in recorder.stages:
        image = occupancy_image(stage)
        assert image.shape == (stage.spatial_shape[1], stage.spatial_shape[0]) and image.sum() == stage.voxels
        assert block_sum(image, 4).sum() == stage.voxels


def test_stepper_next_and_previous_change_the_view(trace):
    _, recorder, result, _, _ = trace
    stepper = node_stepper(result.tracer.nodes, recorder)
    assert "scn-node-view" in stepper.view._dom_classes
    assert (stepper.previous_button.description, stepper.next_button.description) == ("Previous", "Next")
    assert "conv0" in stepper.view.value and "conv1" not in stepper.view.value
    stepper.next_button.click()
    assert stepper.slider.value == 2 and "<b style='font-size:1.2em'>conv1</b>" in stepper.view.value
    stepper.previous_button.click()
    stepper.previous_button.click()  # stays on the first node
    assert stepper.slider.value == 1 and "conv0" in stepper.view.value
    stepper.slider.value = 40
    assert "reshape0" in stepper.view.value and "[1, 256, 180, 180]" in stepper.view.value
    stepper.next_button.click()  # stays on the last node
    assert stepper.slider.value == 40


def test_stepper_shows_the_attributes(trace):
    _, recorder, result, _, _ = trace
    html = node_html(recorder.records[9], 40)
    for text in ("conv5", "SparseConvolution", "node 10 of 40", "output_spatial_shape", "[720, 720, 21]",
                 "spconv1", "weight_dynamic_ranges", "(32 values)"):
        assert text in html


def test_tensor_map_has_one_row_per_tensor_name(trace):
    _, _, result, _, _ = trace
    full = tensor_map_html(result.tracer)
    assert full.count("<tr class='tensor-row'>") == 41  # tensors "0" .. "40"
    assert "graph input" in full and "reshape0 (Reshape)" in full and "alias" in full  # .contiguous() of "39"
    assert tensor_map_html(result.tracer, upto=5).count("<tr class='tensor-row'>") == 6
    bare = tensor_map_html(dict(result.tracer.obj_to_tensor_id))
    assert bare.count("<tr class='tensor-row'>") == 41


def test_nodes_table_has_40_rows(trace):
    _, recorder, _, _, _ = trace
    table = nodes_table_html(recorder)
    assert table.count("<tr>") == 41  # header + 40 nodes
    assert "int8 -&gt; fp16" in table and "fp16 -&gt; int8" in table


def test_mistakes_are_one_line_errors(trace):
    _, recorder, result, _, _ = trace
    with pytest.raises(WorkbookError, match="recorder.watch"):
        stage_chart(StageRecorder())
    with pytest.raises(WorkbookError, match=r"\[1, C, H, W\]"):
        bev_map(torch.zeros(256, 180, 180))
    with pytest.raises(WorkbookError, match="no record"):
        node_stepper(result.tracer.nodes, StageRecorder())
