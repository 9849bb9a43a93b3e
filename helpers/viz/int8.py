"""Pictures of the int8 proof in notebook 03: what int8 costs node by node, and why the first layer stays fp16.

    layer_error_chart(rows)             rows = helpers.check.int8.layer_errors(file, voxels, coords)
    shared_scale_rows(voxels, amax)     distinct values per voxel column before / after one int8 scale
    shared_scale_picture(voxels, amax)  the same as staircases: value in -> value the int8 layer would see

Every function returns its Figure (or rows); none shows it.
"""
from typing import List, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from helpers.check.int8 import fake_quant
from helpers.viz.pictures import finished

COLUMNS = ("x (m)", "y (m)", "z (m)", "intensity", "time-lag (s)")
OP_COLOURS = {"SparseConvolution": "#4a86c5", "Add": "#e08a2c", "Relu": "#7aa35a", "ScatterDense": "#8c6bb1",
              "Transpose": "#8c6bb1", "Reshape": "#8c6bb1"}


def layer_error_chart(rows: List[dict]):
    """Relative error of every node's output, int8 re-run vs float re-run of the same file (log scale).

    A node whose int8 output equals its float output (an fp16 layer at the start) has no bar; it is labelled.
    """
    fig, ax = plt.subplots(figsize=(11, 4))
    errors = [r["relative_error"] for r in rows]
    positive = [e for e in errors if e > 0] or [1.0]
    floor = min(positive) / 10  # the bottom of the log axis
    ax.bar(range(len(rows)), [e if e > 0 else np.nan for e in errors],
           color=[OP_COLOURS.get(r["op"], "grey") for r in rows])
    for i, (r, e) in enumerate(zip(rows, errors)):
        if e == 0:
            label = f"0\n({r['precision']} input)" if r["precision"] and r["precision"] != "int8" else "0"
            ax.annotate(label, (i, floor * 1.3), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)), [r["node"] for r in rows], rotation=90, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylim(floor, max(positive) * 8)  # room for the legend
    ax.set_ylabel("||int8 - float|| / ||float||")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ("#4a86c5", "#e08a2c", "#7aa35a", "#8c6bb1")]
    ax.legend(handles, ["SparseConvolution", "Add", "Relu", "dense tail"], fontsize=8, loc="upper center", ncol=4)
    ax.set_title("what int8 costs, node by node: the file re-run with its own dynamic ranges vs in float")
    return finished(fig)


def shared_scale_rows(voxels: torch.Tensor, amax: float, names: Sequence[str] = COLUMNS) -> List[dict]:
    """Per voxel column: distinct values before and after one shared int8 scale, and how many became 0."""
    x = voxels.detach().half().float().cpu()  # the fp16 graph input
    q = fake_quant(x, torch.tensor(float(amax)))
    rows = []
    for i, name in enumerate(names[:x.shape[1]]):
        before, after = x[:, i], q[:, i]
        rows.append({"column": name, "range": f"{float(before.min()):.3g} .. {float(before.max()):.3g}",
                     "distinct before": int(before.unique().numel()), "distinct after": int(after.unique().numel()),
                     "non-zero turned 0": f"{float(((before != 0) & (after == 0)).float().mean()):.1%}"})
    return rows


def shared_scale_picture(voxels: torch.Tensor, amax: float, columns=(0, 1, 2, 4), names: Sequence[str] = COLUMNS):
    """For x, y, z and time-lag: each voxel's value against what one int8 scale (127 / amax) makes of it."""
    x = voxels.detach().half().float().cpu()
    q = fake_quant(x, torch.tensor(float(amax)))
    step = float(amax) / 127  # one int8 step: the value of code 1 (the scale is 127 / amax)
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 3.4))
    for ax, i in zip(axes, columns):
        before, after = x[:, i].numpy(), q[:, i].numpy()
        order = np.argsort(before)
        ax.plot(before[order], before[order], color="lightgrey", lw=3, label="fp16 (kept)")
        ax.plot(before[order], after[order], color="#c0392b", lw=1.2, drawstyle="steps-post", label="int8")
        if len(np.unique(before)) == 1:  # one value (a single sweep's time-lag): a line would not show
            ax.plot(before[:1], after[:1], "o", color="#c0392b")
        ax.set_title(f"{names[i]}: {len(np.unique(before)):,} -> {len(np.unique(after))} values", fontsize=10)
        ax.set_xlabel("voxel value")
    axes[0].set_ylabel("value the layer sees")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"one int8 scale for all five columns: amax {float(amax):.1f} (set by intensity), "
                 f"step {step:.2f}", fontsize=11)
    return finished(fig)
