"""A static SVG picture of an ONNX graph, so saved and exported notebooks still show the graph.

No graphviz: the graph of the SCN is a chain with residual skips, so a simple layout is enough.
Boxes are placed in graph order, top to bottom, graph input first and graph output last, and
wrap into a few columns so a 40-node graph stays readable inline (about 900 px wide).
Edges: a short arrow to the next box; a skip (the identity of a residual Add) as an arc on the
right of the column; an edge into the next column through the gap between the columns.
The same model always gives the same bytes (integer coordinates, graph order, no ids from memory).
In a notebook: `IPython.display.SVG(graph_svg(model))`.
"""
import math
from typing import List, Tuple
from xml.sax.saxutils import escape, quoteattr

import onnx

from helpers.onnx_file import attributes, load_onnx

MARGIN, COLUMN_WIDTH, BOX_WIDTH, BOX_HEIGHT, ROW_PITCH = 20, 300, 230, 48, 64
ROWS_PER_COLUMN, MAX_COLUMNS = 15, 4
COLOURS = {"SparseConvolution": "#cfe2f3", "Add": "#d9ead3", "Relu": "#fce5cd", "ScatterDense": "#ead1dc",
           "Transpose": "#fff2cc", "Reshape": "#fff2cc", "Conv": "#cfe2f3", "Gemm": "#d0e0e3",
           "graph input": "#ffffff", "graph output": "#ffffff"}
OTHER_COLOUR = "#eeeeee"


def dims(values) -> str:
    """[3, 3, 1] -> '3×3×1'."""
    return "×".join(str(v) for v in values)


def detail_lines(node: onnx.NodeProto) -> List[str]:
    """One or two short lines with the attributes a reader checks first for this op type."""
    a = attributes(node)
    if node.op_type == "SparseConvolution":
        kind = "subm" if a.get("subm") == 1 else "conv"
        precision = a.get("precision", "?")
        if a.get("output_precision", precision) != precision:
            precision = f"{precision}→{a['output_precision']}"
        return [f"{a.get('in_channels', '?')}→{a.get('out_channels', '?')}  k{dims(a.get('kernel_size', []))}"
                f"  s{dims(a.get('stride', []))}",
                f"{kind} {a.get('rulebook', '')} · {a.get('activation', 'None')} · {precision}"]
    if node.op_type == "ScatterDense":
        return [f"{a.get('format', '?')} → [{', '.join(str(v) for v in a.get('output_shape', []))}]"]
    if node.op_type in ("Transpose", "Reshape") and "dims" in a:  # the engine's form
        return [f"dims [{', '.join(str(v) for v in a['dims'])}]"]
    if node.op_type == "Transpose":  # ONNX's own form
        return [f"perm [{', '.join(str(v) for v in a.get('perm', []))}]"]
    if node.op_type == "Reshape":  # ONNX's own form: the shape is the second input
        return [f"shape from {node.input[1]}"] if len(node.input) > 1 else []
    if node.op_type == "Conv":
        return [f"k{dims(a.get('kernel_shape', []))}  s{dims(a.get('strides', []))}  pads {a.get('pads', [])}"]
    if node.op_type == "Gemm":
        return [f"transB={a.get('transB', 0)}"]
    if "precision" in a:
        return [f"{a['precision']}"]
    return []


def tensor_text(value: onnx.ValueInfoProto) -> str:
    """'float16 [N, 5]': element type and shape of a graph input or output."""
    tensor = value.type.tensor_type
    element = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
    shape = ", ".join(str(d.dim_param or d.dim_value) for d in tensor.shape.dim)
    return f"{element} [{shape}]"


def graph_items(graph: onnx.GraphProto) -> List[Tuple[str, str, List[str]]]:
    """Everything that gets a box, in drawing order: (kind, name, text lines).

    kind is "graph input", an op type such as "SparseConvolution", or "graph output".
    """
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    items = [("graph input", v.name, [f"input {v.name}", tensor_text(v)]) for v in inputs]
    for index, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{index}"
        items.append((node.op_type, name, [f"{node.op_type}  {name}"] + detail_lines(node)))
    items += [("graph output", v.name, [f"output {v.name}", tensor_text(v)]) for v in graph.output]
    return items


def graph_edges(graph: onnx.GraphProto) -> List[Tuple[int, int]]:
    """(from box, to box) for every tensor flowing from a node or graph input into a node or output."""
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [v.name for v in graph.input if v.name not in initializers]
    producer = {name: i for i, name in enumerate(inputs)}
    first_node = len(inputs)
    for index, node in enumerate(graph.node):
        for output in node.output:
            producer[output] = first_node + index
    edges = []
    for index, node in enumerate(graph.node):
        edges += [(producer[name], first_node + index) for name in node.input if name in producer]
    first_output = first_node + len(graph.node)
    edges += [(producer[v.name], first_output + i) for i, v in enumerate(graph.output) if v.name in producer]
    return edges


def box_corner(index: int, rows: int) -> Tuple[int, int]:
    """Top-left corner of box `index` when each column holds `rows` boxes."""
    column, row = divmod(index, rows)
    return MARGIN + column * COLUMN_WIDTH, MARGIN + row * ROW_PITCH


def edge_path(start: int, end: int, rows: int) -> str:
    """SVG path data of one edge: straight down, an arc on the right, or through the column gap."""
    (x1, y1), (x2, y2) = box_corner(start, rows), box_corner(end, rows)
    if x1 == x2 and end == start + 1:  # next box below
        centre = x1 + BOX_WIDTH // 2
        return f"M {centre} {y1 + BOX_HEIGHT} L {centre} {y2}"
    if x1 == x2:  # a skip within the column: arc on the right side
        right, bulge = x1 + BOX_WIDTH, min(12 + 8 * (end - start), COLUMN_WIDTH - BOX_WIDTH - 20)
        return (f"M {right} {y1 + BOX_HEIGHT // 2} C {right + bulge} {y1 + BOX_HEIGHT // 2} "
                f"{right + bulge} {y2 + BOX_HEIGHT // 2} {right} {y2 + BOX_HEIGHT // 2}")
    # into another column: down a little, right to the gap between the columns, up, into the box's left side
    gap = x1 + BOX_WIDTH + 20 + 8 * min(end - start - 1, 4)
    centre, below = x1 + BOX_WIDTH // 2, y1 + BOX_HEIGHT + 8
    return f"M {centre} {y1 + BOX_HEIGHT} V {below} H {gap} V {y2 + BOX_HEIGHT // 2} H {x2}"


def box_svg(index: int, item: Tuple[str, str, List[str]], rows: int) -> List[str]:
    """The SVG lines of one box: a coloured rectangle, a bold first line, smaller detail lines."""
    kind, name, lines = item
    x, y = box_corner(index, rows)
    colour = COLOURS.get(kind, OTHER_COLOUR)
    css = kind.replace(" ", "-") if kind.startswith("graph ") else "node"
    out = [f'<g class="{css}" data-name={quoteattr(name)} data-op={quoteattr(kind)}>',
           f"<title>{escape(name)}</title>",
           f'<rect x="{x}" y="{y}" width="{BOX_WIDTH}" height="{BOX_HEIGHT}" rx="6" fill="{colour}" stroke="#555"/>']
    for i, line in enumerate(lines):
        weight = ' font-weight="bold"' if i == 0 else ""
        size = 12 if i == 0 else 10
        out.append(f'<text x="{x + 8}" y="{y + 16 + 14 * i}" font-size="{size}"{weight}>{escape(line)}</text>')
    return out + ["</g>"]


def graph_svg(model_or_path, columns: int = 0) -> str:
    """The SVG text of the graph; `columns=0` picks 1-4 columns from the number of boxes."""
    graph = load_onnx(model_or_path).graph
    items = graph_items(graph)
    columns = columns or max(1, min(MAX_COLUMNS, math.ceil(len(items) / ROWS_PER_COLUMN)))
    rows = max(1, math.ceil(len(items) / columns))
    width, height = 2 * MARGIN + columns * COLUMN_WIDTH, 2 * MARGIN + rows * ROW_PITCH
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif">',
           f"<title>ONNX graph {escape(graph.name)}: {len(graph.node)} nodes</title>",
           '<defs><marker id="scn-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto"><path d="M 0 0 L 10 5 L 0 10 z" fill="#333"/></marker></defs>',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>']
    for start, end in graph_edges(graph):
        out.append(f'<path class="edge" data-from={quoteattr(items[start][1])} data-to={quoteattr(items[end][1])} '
                   f'd="{edge_path(start, end, rows)}" fill="none" stroke="#333" marker-end="url(#scn-arrow)"/>')
    for index, item in enumerate(items):
        out += box_svg(index, item, rows)
    return "\n".join(out + ["</svg>"]) + "\n"


