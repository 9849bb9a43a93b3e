"""helpers.check.runtime: coords against the graph's grid and layout, active voxels against output_bound."""
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from helpers.check.runtime import (check_coords, check_coords_fit, check_output_bound, graph_grid,
                                   output_bound_problems)
from helpers.check.tensor_folder import MANIFEST, manifest_bytes
from helpers.errors import WorkbookError


def tiny_graph(grid, layout="xyz", voxels=(900, 400), bound=200000) -> onnx.ModelProto:
    """Two convs and a ScatterDense, only the attributes the checks read."""
    nodes = [helper.make_node("SparseConvolution", ["0"], ["1"], "conv0", input_spatial_shape=grid,
                              output_shape=[voxels[0], 16], output_bound=bound),
             helper.make_node("SparseConvolution", ["1"], ["2"], "conv1", input_spatial_shape=grid,
                              output_shape=[voxels[1], 32], output_bound=bound),
             helper.make_node("ScatterDense", ["2"], ["3"], "scatter0", format=layout)]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "scn", [value("0", TensorProto.FLOAT16, ["N", 5])],
                              [value("3", TensorProto.FLOAT16, [1])])
    return helper.make_model(graph)


def coords_xyz(n=50, grid=(1440, 1440, 41), seed=0):
    g = torch.Generator().manual_seed(seed)
    columns = [torch.zeros(n, dtype=torch.int32)] + [torch.randint(0, s, (n,), generator=g, dtype=torch.int32)
                                                     for s in grid]
    coords = torch.stack(columns, 1)
    coords[0, 1:] = torch.tensor([s - 1 for s in grid])  # reach the far corner
    return coords


def test_graph_grid_reads_first_conv_and_format():
    assert graph_grid(tiny_graph([41, 1440, 1440], "zyx")) == ([41, 1440, 1440], "zyx")


def test_coords_in_their_own_layout_pass():
    coords = coords_xyz()
    check_coords(coords, tiny_graph([1440, 1440, 41], "xyz"))
    check_coords(coords[:, [0, 3, 2, 1]], tiny_graph([41, 1440, 1440], "zyx"))


def test_xyz_coords_into_a_zyx_graph_name_the_fix():
    with pytest.raises(WorkbookError) as error:
        check_coords(coords_xyz(), tiny_graph([41, 1440, 1440], "zyx"))
    message = str(error.value)
    assert "look like xyz" in message and "coords[:, [0, 3, 2, 1]]" in message and "[41, 1440, 1440]" in message


def test_zyx_coords_into_an_xyz_graph_name_the_fix():
    with pytest.raises(WorkbookError, match="look like zyx"):
        check_coords(coords_xyz()[:, [0, 3, 2, 1]], tiny_graph([1440, 1440, 41], "xyz"))


def test_coords_of_another_grid_name_the_column():
    coords = coords_xyz(grid=(1600, 1600, 41))
    with pytest.raises(WorkbookError, match=r"column 1 \(x\) spans .*0\.\.1439"):
        check_coords_fit(coords, [1440, 1440, 41], "xyz")
    with pytest.raises(WorkbookError, match=r"expected \[N, 4\]"):
        check_coords_fit(coords[:, 1:], [1440, 1440, 41], "xyz")


def test_output_bound_names_each_conv_over_it():
    assert output_bound_problems(tiny_graph([1440, 1440, 41])) == []
    problems = output_bound_problems(tiny_graph([1440, 1440, 41], bound=500))
    assert len(problems) == 1 and problems[0].startswith("conv0: 900 active output voxels but output_bound=500")
    with pytest.raises(WorkbookError, match="output_bound >= 900"):
        check_output_bound(tiny_graph([1440, 1440, 41], bound=500))


def test_output_bound_with_counts_of_another_scan():
    graph = tiny_graph([1440, 1440, 41], bound=1000)
    assert output_bound_problems(graph, active={"conv1": 1200}) == [
        "conv1: 1200 active output voxels but output_bound=1000; export with output_bound >= 1200 "
        "(with room for the densest scan you expect)"]


def test_verify_cli_says_when_the_saved_coords_do_not_fit_the_graph(tmp_path, capsys):
    import numpy as np

    from helpers import verify
    graph = tmp_path / "scn.zyx.onnx"
    onnx.save(tiny_graph([41, 1440, 1440], "zyx"), str(graph))
    tensors = tmp_path / "tensors"
    tensors.mkdir()
    coords = coords_xyz().numpy()  # written in xyz order
    np.save(tensors / "voxels.npy", np.zeros((len(coords), 5), np.float16))
    np.save(tensors / "coors.npy", coords)
    np.save(tensors / "output.npy", np.zeros((1, 4), np.float32))
    np.save(tensors / "output_int8.npy", np.zeros((1, 4), np.float32))
    (tensors / MANIFEST).write_bytes(manifest_bytes(graph.read_bytes(), [p.name for p in tensors.iterdir()]))
    assert verify.main([str(graph), "--tensors", str(tensors)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "look like xyz" in err and "coords[:, [0, 3, 2, 1]]" in err
