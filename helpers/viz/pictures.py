"""matplotlib pictures of a trace for notebook 03: what the stages did to the voxels and the features.

    stage_chart(recorder); occupancy_grid(recorder); histograms(recorder, amax_table(model)); bev_map(result.output)
Every function returns its Figure; none shows it.
"""
from typing import List, Optional

import matplotlib.pyplot as plt
import numpy as np
import torch

from helpers.errors import WorkbookError
from helpers.viz.recorder import StageOutput, StageRecorder, shape_text


def short_stage(stage: str) -> str:
    return stage.split(".")[-1]  # encoder_layers.encoder_layer2 -> encoder_layer2


def stage_panels(n: int, columns: int, height: float):
    """A figure with one axes per stage, `columns` to a row; the unused axes of the last row removed."""
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, height * rows), squeeze=False)
    for ax in list(axes.flat)[n:]:
        fig.delaxes(ax)
    return fig, list(axes.flat)[:n]


def finished(fig):
    """Lay out, and close for pyplot: the figure is returned, and the notebook displays it once."""
    fig.tight_layout()
    plt.close(fig)
    return fig


def stage_chart(recorder: StageRecorder):
    """Active voxels after each stage (bars, log scale), each bar labelled with its grid x × y × z."""
    stages = recorder._checked_stages()
    fig, ax = plt.subplots(figsize=(9, 4))
    bars = ax.bar(range(len(stages)), [s.voxels for s in stages], color="#4a86c5")
    for bar, s in zip(bars, stages):
        ax.annotate(f"{s.voxels:,}\n{shape_text(s.spatial_shape)}", (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(stages)), [f"{short_stage(s.stage)}\n({s.node})" for s in stages], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(top=ax.get_ylim()[1] * 4)  # room for the labels
    ax.set_ylabel("active voxels (log)")
    ax.set_title("active voxels after each stage, and the grid (x × y × z) they live on")
    return finished(fig)


def occupancy_image(stage: StageOutput) -> np.ndarray:
    """[Y, X] count of active voxels in each x, y column of the stage's grid."""
    nx, ny = stage.spatial_shape[:2]
    image = np.zeros((ny, nx), np.int32)
    np.add.at(image, (stage.xy[:, 1], stage.xy[:, 0]), 1)
    return image


def block_sum(image: np.ndarray, factor: int) -> np.ndarray:
    """[H, W] -> [H / factor, W / factor] sums of factor x factor blocks (zero-padded at the edges)."""
    h, w = -(-image.shape[0] // factor) * factor, -(-image.shape[1] // factor) * factor
    padded = np.zeros((h, w), image.dtype)
    padded[:image.shape[0], :image.shape[1]] = image
    return padded.reshape(h // factor, factor, w // factor, factor).sum(axis=(1, 3))


def occupancy_grid(recorder: StageRecorder, columns: int = 3, pixels: int = 360):
    """Bird's-eye occupancy of every stage: one image per stage, x to the right, y up.

    Grids finer than `pixels` are summed in blocks (1440 -> 4 x 4 blocks), so no active column is lost
    when the picture is drawn smaller than the grid.
    """
    stages = recorder._checked_stages()
    fig, axes = stage_panels(len(stages), columns, 4)
    for ax, s in zip(axes, stages):
        image = occupancy_image(s)  # [Y, X]
        factor = max(1, -(-max(image.shape) // pixels))
        ax.imshow(np.log1p(block_sum(image, factor)), origin="lower", cmap="magma", interpolation="nearest")
        blocks = f", {factor}×{factor} blocks" if factor > 1 else ""
        ax.set_title(f"{short_stage(s.stage)}: {shape_text(s.spatial_shape[:2])}{blocks}\n"
                     f"{int((image > 0).sum()):,} occupied columns, {s.voxels:,} voxels", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("occupied x, y columns (brighter = more active voxels stacked in z)")
    return finished(fig)


def next_conv_amax(recorder: StageRecorder, stage: StageOutput, amax_rows: List[dict]) -> Optional[float]:
    """The calibrated input amax of the first conv after the stage's last node, or None (no next conv)."""
    names = [r.name for r in recorder.records]
    start = names.index(stage.node) + 1 if stage.node in names else len(names)
    conv = next((r for r in recorder.records[start:] if r.op == "SparseConvolution"), None)
    if conv is None:
        return None
    row = next((r for r in amax_rows if r["layer"] == conv.module and r["quantizer"] == "input"), None)
    return row["amax"] if row else None


def histograms(recorder: StageRecorder, amax_rows: List[dict], columns: int = 3):
    """Sampled feature values of each stage, with the next conv's int8 range -amax..amax as red lines."""
    stages = recorder._checked_stages()
    fig, axes = stage_panels(len(stages), columns, 3)
    for ax, s in zip(axes, stages):
        amax = next_conv_amax(recorder, s, amax_rows)
        ax.hist(s.values, bins=80, color="#6aa84f", log=True, histtype="stepfilled")  # one polygon: quick to draw
        title = f"{short_stage(s.stage)} ({s.node})"
        if amax is not None:
            for x in (-amax, amax):
                ax.axvline(x, color="#cc0000", linestyle="--", linewidth=1)
            title += f"\namax {amax:.3g}: {100 * float(np.mean(np.abs(s.values) > amax)):.2f}% clipped"
        else:
            title += "\nfp16 output: no int8 range"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("feature value", fontsize=8)
    return finished(fig)


def bev_map(output: torch.Tensor):
    """The BEV map [1, C, X, Y] as one image: the L2 norm over the C channels of every cell, x to the right."""
    if output.dim() != 4 or output.shape[0] != 1:
        raise WorkbookError(f"bev_map needs the SCN output [1, C, H, W]; got {list(output.shape)}")
    norm = output[0].float().norm(dim=0).cpu().numpy()  # [X, Y], computed where the output lives
    fig, ax = plt.subplots(figsize=(6, 5))
    picture = ax.imshow(norm.T, origin="lower", cmap="viridis", interpolation="nearest")  # [Y, X]
    fig.colorbar(picture, ax=ax, label="L2 norm over channels")
    ax.set_title(f"BEV map {list(output.shape)}: {int((norm > 0).sum()):,} non-empty cells")
    ax.set_xlabel("x cell")
    ax.set_ylabel("y cell")
    return finished(fig)


