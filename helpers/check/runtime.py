"""What the engine meets at run time, beyond the file: the voxel coordinates and the output bound.

    check_coords(coords, graph)     the coords fit the graph's grid, in the graph's axis order (xyz / zyx)
    check_output_bound(graph)       no conv makes more active voxels than its output_bound lets the engine hold

Neither mistake shows in the file itself, and neither makes spconv or the engine stop: coords in the
wrong order fall outside the grid and vanish (a nearly empty BEV map), and a conv whose active voxels
exceed `output_bound` overruns the buffer the engine sized for it. So the workbook checks both.
"""
from typing import Dict, List, Optional, Sequence

import torch

from helpers.errors import WorkbookError
from helpers.onnx_file import attributes, load_onnx

AXES = {"xyz": "xyz", "zyx": "zyx"}  # the coordinate columns after the batch column, per layout


def graph_grid(graph) -> tuple:
    """(input grid, layout) of a saved SCN graph: the first conv's input_spatial_shape, ScatterDense's format."""
    from helpers.check.int8 import ints, string  # here, not at the top: int8 -> model -> layout -> this module
    model = load_onnx(graph)
    convs = [n for n in model.graph.node if n.op_type == "SparseConvolution"]
    dense = [n for n in model.graph.node if n.op_type == "ScatterDense"]
    if not convs:
        raise WorkbookError("the graph has no SparseConvolution node; expected an SCN graph from helpers.export")
    layout = string(dense[0], "format") if dense else "xyz"
    return ints(convs[0], "input_spatial_shape"), layout if layout in AXES else "xyz"


def check_coords_fit(coords: torch.Tensor, grid: Sequence[int], layout: str = "xyz") -> None:
    """Raise a WorkbookError unless every (batch, a, b, c) row of `coords` lies inside `grid`, in `layout` order."""
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise WorkbookError(f"coords have shape {list(coords.shape)}; expected [N, 4] int32 rows "
                            f"(batch, {', '.join(AXES[layout])})")
    if len(coords) == 0:
        return
    low = coords[:, 1:].min(dim=0).values.tolist()
    high = coords[:, 1:].max(dim=0).values.tolist()
    fits = all(lo >= 0 and hi < n for lo, hi, n in zip(low, high, grid))
    if fits:
        return
    other = "zyx" if layout == "xyz" else "xyz"
    if all(lo >= 0 and hi < n for lo, hi, n in zip(low[::-1], high[::-1], grid)):
        raise WorkbookError(f"the coords look like {other} rows (batch, {', '.join(AXES[other])}), but the graph "
                            f"reads {layout} with grid {list(grid)}: their largest values {high} do not fit it; "
                            f"reorder them with coords[:, [0, 3, 2, 1]] or export the graph with layout={other!r}")
    axis = next(i for i, (lo, hi, n) in enumerate(zip(low, high, grid)) if lo < 0 or hi >= n)
    raise WorkbookError(f"coords column {axis + 1} ({AXES[layout][axis]}) spans {low[axis]}..{high[axis]}, outside "
                        f"the grid's 0..{grid[axis] - 1}; voxelize with the same grid (helpers.config) as the graph")


def check_coords(coords: torch.Tensor, graph) -> None:
    """Raise a WorkbookError unless `coords` fit the saved graph's grid in its axis order (a graph without a
    readable grid is left to the contract check, which names the attribute)."""
    grid, layout = graph_grid(graph)
    if len(grid) != 3:
        return
    check_coords_fit(coords, grid, layout)


def output_bound_problems(graph, active: Optional[Dict[str, int]] = None) -> List[str]:
    """Every conv whose active output voxels exceed its output_bound, as sentences (empty list: none).

    `active` maps node names to output voxel counts (e.g. from a trace of the largest scan you expect);
    by default the counts seen while tracing are used, which the file keeps in each conv's output_shape.
    """
    problems = []
    for node in load_onnx(graph).graph.node:
        if node.op_type != "SparseConvolution":
            continue
        a = attributes(node)
        bound = a.get("output_bound", 150000)  # the engine's parser uses 150000 when the attribute is missing
        voxels = (active or {}).get(node.name, (a.get("output_shape") or [0])[0])
        if voxels > bound:
            problems.append(f"{node.name}: {voxels} active output voxels but output_bound={bound}; "
                            f"export with output_bound >= {voxels} (with room for the densest scan you expect)")
    return problems


def check_output_bound(graph, active: Optional[Dict[str, int]] = None) -> None:
    """Raise a WorkbookError naming every conv whose active voxels do not fit its output_bound."""
    problems = output_bound_problems(graph, active)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise WorkbookError("; ".join(problems[:3]) + more)
