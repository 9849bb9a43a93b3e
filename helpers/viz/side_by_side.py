"""Two (or more) traced graphs side by side: node counts per op and shapes per stage, from the nodes alone.

    graphs = {"BEVFusion": result.tracer.nodes, "CenterPoint": result_cp.tracer.nodes}
    display(HTML(table_html(op_count_rows(graphs))))
    display(HTML(table_html(stage_rows(graphs))))

Nothing here knows either network: a stage is what the graph says it is. The input grid, then every
conv that changes the grid (a SparseConvolution with subm=0), then each node of the dense tail
(ScatterDense, Transpose, Reshape). A graph without such a node shows "-" in that row.
"""
from collections import Counter
from typing import Dict, List, Sequence

from helpers.trace.tracer import Node
from helpers.viz.recorder import shape_text

OPS = ["SparseConvolution", "Add", "Relu", "ScatterDense", "Transpose", "Reshape"]  # in the order of a graph
TAIL = ["ScatterDense", "Transpose", "Reshape"]  # sparse -> dense -> BEV map


def op_count_rows(graphs: Dict[str, Sequence[Node]]) -> List[dict]:
    """One row per op type (and a total): how many nodes of it each graph has."""
    counts = {name: Counter(n.op for n in nodes) for name, nodes in graphs.items()}
    ops = OPS + sorted({op for c in counts.values() for op in c} - set(OPS))
    rows = [{"op": op, **{name: c.get(op, 0) for name, c in counts.items()}} for op in ops]
    rows.append({"op": "nodes", **{name: len(nodes) for name, nodes in graphs.items()}})
    return rows


def stages(nodes: Sequence[Node]) -> Dict[str, str]:
    """Stage label -> "grid · channels · voxels" (sparse) or the dense shape, in graph order."""
    convs = [n for n in nodes if n.op == "SparseConvolution"]
    if not convs:
        return {}
    first = convs[0].attributes
    found = {"input": f"{shape_text(first['input_spatial_shape'])} · {first['in_channels']} ch · "
                      f"{first['input_shape'][0]:,} voxels"}
    for i, n in enumerate(c for c in convs if not c.attributes["subm"]):
        a = n.attributes
        found[f"stride conv {i + 1}"] = (f"{shape_text(a['output_spatial_shape'])} · {a['out_channels']} ch · "
                                         f"{a['output_shape'][0]:,} voxels  ({n.info.get('module', n.name)})")
    for n in nodes:
        if n.op == "ScatterDense":
            found[n.op] = f"{n.attributes['output_shape']}  format {n.attributes['format']}"
        elif n.op == "Transpose":
            found[n.op] = f"dims {n.attributes['dims']}"  # a permutation
        elif n.op == "Reshape":
            found[n.op] = f"{n.attributes['dims']}"  # the output shape
    return found


def stage_rows(graphs: Dict[str, Sequence[Node]]) -> List[dict]:
    """One row per stage label found in any graph, a column per graph ("-" where a graph has no such stage)."""
    per_graph = {name: stages(nodes) for name, nodes in graphs.items()}
    labels = list(dict.fromkeys(label for found in per_graph.values() for label in found if label not in TAIL))
    labels += [op for op in TAIL if any(op in found for found in per_graph.values())]  # the dense tail, in order
    return [{"stage": label, **{name: found.get(label, "-") for name, found in per_graph.items()}}
            for label in labels]
