"""Pictures and widgets of a trace, for notebook 03: what each node did and what the features look like.

    recorder = StageRecorder(print_nodes=True)            # an on_node callback for export_scn
    with recorder.watch(model):                           # forward hooks on the stages: where the voxels are
        result = export_scn(model, voxels, coords, on_node=recorder)
    stage_chart(recorder); occupancy_grid(recorder); histograms(recorder, amax_table(model)); bev_map(result.output)
    node_stepper(result.tracer.nodes, recorder)           # Previous / Next through the 40 nodes

The node callback sees each node and its output features [N, C], but not the voxel coordinates: those
live on the SparseConvTensor. So `watch` adds forward hooks (notebook 01) to the stage modules; a hook
copies a small sample to the CPU (coordinates and at most `sample` feature values) only at the six stage
ends, because every copy from a GPU waits for the GPU. Every function returns its Figure or HTML; none shows it.
"""
import html
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch

from helpers.errors import WorkbookError


@dataclass
class NodeRecord:
    """What the notebook shows of one node; plain Python values only, nothing that holds GPU memory."""
    index: int  # position in the trace, 0-based
    op: str
    name: str
    inputs: List[str]  # tensor names ("9"); weights and biases are in `initializers`
    initializers: List[str]
    outputs: List[str]
    attributes: dict
    module: str  # module path, "" for the dense tail (dense / permute / reshape)
    spatial: tuple  # (input spatial shape, output spatial shape); dense tensor shapes for the tail
    voxels: int  # rows of the output feature matrix (active sites); 0 for dense tensors


@dataclass
class StageOutput:
    """The features at the end of one stage (conv_input, encoder_layer1..4, conv_out), sampled on the CPU."""
    stage: str  # module path, e.g. "encoder_layers.encoder_layer2"
    node: Optional[str]  # the node whose output ends the stage, e.g. "conv10"
    spatial_shape: List[int]  # grid in x, y, z order, e.g. [720, 720, 21]
    voxels: int  # active sites
    xy: np.ndarray = field(repr=False)  # [voxels, 2] int32 x, y of every active site
    values: np.ndarray = field(repr=False)  # [<= sample] float32 feature values, a fixed random sample


class StageRecorder:
    """`on_node` callback: keeps a NodeRecord per node and, inside `watch(model)`, a StageOutput per stage."""

    def __init__(self, print_nodes: bool = False, sample: int = 20000):
        self.print_nodes = print_nodes
        self.sample = sample  # feature values kept per stage, for the histograms
        self.records: List[NodeRecord] = []
        self.stages: List[StageOutput] = []
        self._made_by: Dict[int, int] = {}  # id(output features) -> record index, only while watching
        self._spatial: list = []  # the current grid: Add and Relu keep the last conv's

    def __call__(self, node, output: torch.Tensor):
        if self.print_nodes:
            print(node)
        spatial = node.info.get("spatial")
        if spatial is None:  # Add, Relu: the grid of the features they read; Transpose, Reshape: dense shapes
            spatial = (self._spatial, self._spatial) if output.dim() == 2 else (self._spatial, list(output.shape))
        self._spatial = list(spatial[1])
        tensors = [i for i in node.inputs if i.isdigit()]
        self.records.append(NodeRecord(len(self.records), node.op, node.name, tensors,
                                       [i for i in node.inputs if not i.isdigit()], list(node.outputs),
                                       dict(node.attributes), node.info.get("module", ""),
                                       (list(spatial[0]), list(spatial[1])),
                                       int(output.shape[0]) if output.dim() == 2 else 0))
        self._made_by[id(output)] = len(self.records) - 1  # the tracer keeps `output` alive: ids stay unique

    @contextmanager
    def watch(self, model: torch.nn.Module):
        """Hook conv_input, each encoder layer and conv_out of a SparseEncoder for the `with` block."""
        names = ["conv_input"] + [f"encoder_layers.{n}" for n, _ in model.encoder_layers.named_children()] + \
            ["conv_out"]
        layout = model.cfg.layout if hasattr(model, "cfg") else "xyz"
        self.records, self.stages, self._made_by, self._spatial = [], [], {}, []  # a fresh recording
        handles = [model.get_submodule(n).register_forward_hook(self._stage_hook(n, layout)) for n in names]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._made_by = {}  # the ids mean nothing once the trace is gone

    def _stage_hook(self, stage: str, layout: str):
        def hook(module, inputs, out):  # out: the stage's SparseConvTensor
            index = self._made_by.get(id(out.features))
            xy = out.indices[:, 1:3] if layout == "xyz" else out.indices[:, [3, 2]]  # [N, 2] x, y on the device
            flat = torch.flatten(out.features)  # [N * C]; not .reshape(), which is traced and would become a node
            pick = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:self.sample]
            shape = list(out.spatial_shape) if layout == "xyz" else list(out.spatial_shape)[::-1]
            self.stages.append(StageOutput(stage, self.records[index].name if index is not None else None, shape,
                                           int(out.indices.shape[0]), xy.int().cpu().numpy(),
                                           flat[pick.to(flat.device)].float().cpu().numpy()))
        return hook

    def spatial_shapes(self) -> List[List[int]]:
        """The grid after each stage, x, y, z: [[1440, 1440, 41], [720, 720, 21], ...]."""
        return [s.spatial_shape for s in self._checked_stages()]

    def _checked_stages(self) -> List[StageOutput]:
        if not self.stages:
            raise WorkbookError("the recorder saw no stage outputs; trace inside `with recorder.watch(model):`")
        return self.stages


def short_stage(stage: str) -> str:
    return stage.split(".")[-1]  # encoder_layers.encoder_layer2 -> encoder_layer2


def shape_text(shape) -> str:
    return " × ".join(map(str, shape))  # [720, 720, 21] -> "720 × 720 × 21"


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
        ax.hist(s.values, bins=80, color="#6aa84f", log=True)
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


def short_value(value) -> str:
    """Attribute values for a table: long lists are cut to their first 4 values and their length."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        head = ", ".join(short_value(v) for v in value[:4])
        return f"[{head}, ...] ({len(value)} values)"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(short_value(v) for v in value) + "]"
    return str(value)


def node_html(record: NodeRecord, total: int, pairs_per_row: int = 3) -> str:
    """One node as HTML: its name first, then op, tensors, grid, voxels and the attributes (3 to a row)."""
    e = html.escape
    cells = [f"<td><code>{e(k)}</code></td><td style='white-space:nowrap'>{e(short_value(v))}</td>"
             for k, v in sorted(record.attributes.items())]
    rows = "".join("<tr>" + "".join(cells[i:i + pairs_per_row]) + "</tr>" for i in range(0, len(cells), pairs_per_row))
    weights = f" + initializers {', '.join(record.initializers)}" if record.initializers else ""
    return (f"<div><b style='font-size:1.2em'>{e(record.name)}</b> &nbsp; {e(record.op)} "
            f"&nbsp; (node {record.index + 1} of {total})<br>"
            f"module: <code>{e(record.module or '(dense tail of the network)')}</code><br>"
            f"tensors: {e(', '.join(record.inputs))}{e(weights)} &rarr; {e(', '.join(record.outputs))}<br>"
            f"shape: {record.spatial[0]} &rarr; {record.spatial[1]}"
            + (f", {record.voxels:,} active voxels" if record.voxels else "") + "<br>"
            + (f"<table>{rows}</table>" if rows else "no attributes")
            + "</div>")


class NodeStepper(widgets.VBox):
    """Previous / Next / Play through the recorded nodes; the HTML area (CSS class scn-node-view) shows one."""

    def __init__(self, records: List[NodeRecord]):
        self.records = records
        self.previous_button = widgets.Button(description="Previous", tooltip="previous node")
        self.next_button = widgets.Button(description="Next", tooltip="next node")
        self.slider = widgets.IntSlider(value=1, min=1, max=len(records), description="node")  # 1-based
        self.play = widgets.Play(value=1, min=1, max=len(records), interval=700)
        self.view = widgets.HTML(node_html(records[0], len(records)))
        self.previous_button.add_class("scn-previous")
        self.next_button.add_class("scn-next")
        self.view.add_class("scn-node-view")
        widgets.jslink((self.play, "value"), (self.slider, "value"))  # Play drives the slider in the browser
        self.slider.observe(self._show, names="value")
        self.previous_button.on_click(lambda _: self._step(-1))
        self.next_button.on_click(lambda _: self._step(+1))
        super().__init__([widgets.HBox([self.previous_button, self.next_button, self.play, self.slider]), self.view])

    def _step(self, delta: int):
        self.slider.value = min(max(self.slider.value + delta, 1), len(self.records))

    def _show(self, change):
        self.view.value = node_html(self.records[change["new"] - 1], len(self.records))


def node_stepper(nodes, recorder: StageRecorder) -> NodeStepper:
    """A step-through widget over `nodes` (the tracer's), described with what `recorder` kept of each."""
    records = {r.name: r for r in recorder.records}
    missing = [n.name for n in nodes if n.name not in records]
    if not nodes or missing:
        raise WorkbookError(f"the recorder has no record of nodes {missing[:3]}; pass the recorder given as "
                            "on_node to the export that made these nodes")
    return NodeStepper([records[n.name] for n in nodes])


def table_html(rows: List[dict], css_class: str = "scn-table") -> str:
    """A list of dicts as an HTML table: one column per key of the first row, values via short_value."""
    e = html.escape
    columns = list(rows[0]) if rows else []
    head = "".join(f"<th>{e(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td style='white-space:nowrap'>{e(short_value(r.get(c, '')))}</td>"
                                    for c in columns) + "</tr>" for r in rows)
    return f"<table class='{css_class}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def nodes_table_html(recorder: StageRecorder) -> str:
    """The summary of the graph: one row per node (name, op, tensors, grid, voxels, precision, module)."""
    rows = []
    for r in recorder.records:
        a = r.attributes
        rows.append({"#": r.index, "node": r.name, "op": r.op, "in": ",".join(r.inputs), "out": ",".join(r.outputs),
                     "shape in -> out": f"{shape_text(r.spatial[0])} -> {shape_text(r.spatial[1])}",
                     "voxels": f"{r.voxels:,}" if r.voxels else "",
                     "precision": f"{a['precision']} -> {a['output_precision']}" if "precision" in a else "",
                     "activation": a.get("activation", ""), "module": r.module})
    return table_html(rows, "scn-nodes")


def tensor_map_html(tracer_or_map, upto: Optional[int] = None) -> str:
    """obj_to_tensor_id as a table, one row per tensor name: the Python id()s that carry it, what made it.

    `upto=k` shows the map as it was after the first k nodes: names are handed out in trace order and a
    dict keeps insertion order, so that is every name up to "k". Give a Tracer to see makers and shapes.
    """
    mapping = getattr(tracer_or_map, "obj_to_tensor_id", tracer_or_map)  # a Tracer or the dict itself
    nodes = getattr(tracer_or_map, "nodes", [])
    tensors = {id(t): t for t in getattr(tracer_or_map, "keep_alive", [])}
    made_by = {"0": "graph input"} | {n.outputs[0]: f"{n.name} ({n.op})" for n in nodes}
    ids_of: Dict[str, List[int]] = {}
    for obj_id, name in mapping.items():  # insertion order = trace order
        if upto is None or int(name) <= upto:
            ids_of.setdefault(name, []).append(obj_id)
    e = html.escape
    rows = []
    for name, ids in ids_of.items():
        shape = list(tensors[ids[0]].shape) if ids[0] in tensors else ""
        alias = f" (+ {len(ids) - 1} alias: the same values after .contiguous())" if len(ids) > 1 else ""
        rows.append(f"<tr class='tensor-row'><td><code>{', '.join(map(str, ids))}</code>{e(alias)}</td>"
                    f"<td><b>{e(name)}</b></td><td>{e(made_by.get(name, ''))}</td><td>{e(str(shape))}</td></tr>")
    caption = f"obj_to_tensor_id: {len(rows)} tensor names, {sum(map(len, ids_of.values()))} Python ids"
    return (f"<table class='scn-tensor-map'><caption>{caption}</caption><thead><tr><th>id(tensor)</th>"
            f"<th>name</th><th>made by</th><th>shape</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
