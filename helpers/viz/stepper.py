"""HTML of a trace for notebook 03: the node step-through widget, the node table and the tensor map.

    node_stepper(result.tracer.nodes, recorder)           # Previous / Next through the 40 nodes
Every function returns its widget or HTML text; none displays it.
"""
import html
from typing import Dict, List, Optional

import ipywidgets as widgets

from helpers.errors import WorkbookError
from helpers.viz.recorder import NodeRecord, StageRecorder, shape_text


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
