"""The checks of notebook 04's exercises (see helpers/exercises.py for how a check cell works).

    1  flatten_handler(tracer, y, x, start_dim, end_dim)   the handler of Tensor.flatten: a Reshape node
    2  repair_file(broken, repaired)                       a file whose ScatterDense format was damaged, repaired
    3  to_network_order(coords, layout)                    (b, x, y, z) coords in the order a network reads

Each check builds small networks of its own (zyx or xyz, channels and grid drawn at random), exports them
with the workbook's exporter and judges the answer by what the file holds and what the contract check says.
"""
import tempfile
from pathlib import Path

import numpy as np
import onnx
import spconv.pytorch as spconv
import torch
from torch import nn

from helpers.check.contract import check_contract
from helpers.errors import WorkbookError
from helpers.exercises import ClassState, Exercise, ListState, NotYet, expect, expect_equal, fresh_random
from helpers.model import place
from helpers.pipeline import export_scn, prepare_scn
from helpers.trace.handlers import REGISTRY
from helpers.trace.registry import Registry

# a wrong attempt may patch Tensor.flatten by hand, or register its handler in the workbook's own registry
PROTECT = (ClassState(torch.Tensor, "torch.Tensor"), ListState(REGISTRY, "patches", "REGISTRY.patches"))


def registry_with(owner: type, name: str, handler) -> Registry:
    """A new registry: the workbook's handlers plus `owner.name` -> handler (REGISTRY itself is unchanged)."""
    registry = Registry()
    registry.patches = list(REGISTRY.patches)
    registry.register(owner, name)(handler)
    return registry


def block(cin, cout, kernel, stride=1, padding=0, subm=False, key=None):
    """conv + BatchNorm1d + ReLU, as OpenPCDet's post_act_block writes them."""
    conv = (spconv.SubMConv3d(cin, cout, kernel, padding=padding, bias=False, indice_key=key) if subm else
            spconv.SparseConv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False, indice_key=key))
    return spconv.SparseSequential(conv, nn.BatchNorm1d(cout, eps=1e-3, momentum=0.01), nn.ReLU())


class CheckNet(nn.Module):
    """A small backbone in either layout: SubM conv, stride-2 conv, z squeeze, dense, BEV view.

    zyx: dense [1, C, Z, Y, X], folded as it is; xyz: dense [1, C, X, Y, Z], permuted to [1, C, Z, X, Y] first.
    `flat`: the BEV view is `flatten(1, 2)` (and the coords are flattened on the way in), else `reshape`."""

    def __init__(self, layout: str, rows: int, cols: int, channels: int, flat: bool):
        super().__init__()
        self.layout, self.flat = layout, flat
        zyx = layout == "zyx"
        self.sparse_shape = [11, rows, cols] if zyx else [cols, rows, 11]  # z has 11 planes
        squeeze_kernel, squeeze_stride = ((3, 1, 1), (2, 1, 1)) if zyx else ((1, 1, 3), (1, 1, 2))
        self.conv_input = block(4, channels, 3, padding=1, subm=True, key="subm1")
        self.conv2 = block(channels, 2 * channels, 3, stride=2, padding=1, key="spconv2")  # z 11 -> 6
        self.conv_out = block(2 * channels, 2 * channels, squeeze_kernel, stride=squeeze_stride, key="down")  # 6 -> 2

    def forward(self, voxel_features, coors, batch_size=1):
        if self.flat:
            coors = coors.flatten(1)  # [N, 4] stays [N, 4]: a flatten of a tensor that is not a feature
        x = spconv.SparseConvTensor(voxel_features, coors, self.sparse_shape, batch_size)
        dense = self.conv_out(self.conv2(self.conv_input(x))).dense()
        if self.layout == "xyz":
            dense = dense.permute(0, 1, 4, 2, 3)  # [1, C, Z, X, Y]
        if self.flat:
            return dense.flatten(1, 2)
        n, c, d, h, w = dense.shape
        return dense.reshape(n, c * d, h, w)  # after a permute, view cannot: reshape copies


def check_network(rng, layout: str, flat: bool):
    """(network prepared for an fp16 export, voxels, coords): grid and channels drawn from `rng`."""
    torch.manual_seed(rng.randint(0, 2**31 - 1))
    net = CheckNet(layout, rng.choice([24, 32, 40]), rng.choice([16, 24, 32]), rng.choice([4, 8]), flat).eval()
    shape = net.sparse_shape
    g = np.random.default_rng(rng.randint(0, 2**31 - 1))
    flat_index = g.choice(int(np.prod(shape)), 300, replace=False)
    cells = np.stack(np.unravel_index(flat_index, shape), 1)
    coords = torch.from_numpy(np.concatenate([np.zeros((300, 1), np.int64), cells], 1).astype(np.int32))
    voxels = torch.from_numpy(g.normal(size=(300, 4)).astype(np.float32))
    model = prepare_scn(place(net, "cpu"), [(voxels, coords)], int8=False, progress=False)
    return model, voxels, coords


# ---------------------------------------------------------------------------------------------------
# Exercise 1: the handler of Tensor.flatten.

def check_flatten_handler(flatten_handler):
    rng = fresh_random()
    for layout in rng.sample(["zyx", "xyz"], 2):
        model, voxels, coords = check_network(rng, layout, flat=True)
        what = f"the {layout} network ending in dense().flatten(1, 2)"
        try:
            result = export_scn(model, voxels, coords, registry=registry_with(torch.Tensor, "flatten", flatten_handler))
        except WorkbookError as err:
            if "no traced op produced" in str(err):
                raise NotYet(f"{what}: the handler wrote a node for `coors.flatten(1)`, a tensor the network did "
                             "not compute", "no node for it", str(err)[:120],
                             "a handler writes a node only for a tensor the trace knows (tracer.knows(x)), as the "
                             "Transpose and Reshape handlers do") from None
            raise
        nodes = result.tracer.nodes
        expected = list(result.output.shape)  # [1, C * Z, a, b]
        last = nodes[-1]
        if last.op in ("ScatterDense", "Transpose"):
            raise NotYet(f"{what}: no node for the flatten; the graph ends with {last.op}, whose output is 5-d",
                         f"a last node whose output is {expected}", [n.op for n in nodes[-2:]],
                         "record the node: tracer.add_node(op, [name of x], y, attributes)")
        expect(last.op == "Reshape", f"{what}: the op type of the flatten's node", "Reshape", last.op,
               "the engine's parser knows six op types (docs/ONNX_CONTRACT.md); ONNX's own Flatten is not one of "
               "them: which of the six changes a shape without moving any value?")
        dims = last.attributes.get("dims")
        before = [expected[0], expected[1] // 2, 2, *expected[2:]]  # x: [1, C, Z, a, b], every check net has Z = 2
        if isinstance(dims, (list, tuple)) and list(dims) == before:
            raise NotYet(f"{what}: Reshape's dims", expected, list(dims), "dims is the shape the node makes (y's), "
                         "not the shape it reads")
        expect_equal(list(dims) if isinstance(dims, (list, tuple)) else dims, expected,
                     f"{what}: Reshape's dims (the contract's row: one attribute `dims`, INTS)",
                     "the resolved shape of the output, every -1 replaced by its number: list(y.shape)")
        expect_equal(last.inputs, [nodes[-2].outputs[0]], f"{what}: the Reshape's input",
                     "the input is the name the tracer gave x: tracer.tensor_id(x)")
        expect_equal(sum(n.op == "Reshape" for n in nodes), 1, f"{what}: Reshape nodes in the graph",
                     "one flatten of a feature tensor, one node")
        problems = check_contract(result.model)
        expect(not problems, f"{what}: the file breaks the contract", "no problems", problems[:1],
               "give `dims` as a list of ints (an INTS attribute)")


# ---------------------------------------------------------------------------------------------------
# Exercise 2: repair a file whose ScatterDense format was damaged.

def damaged_file(rng, layout: str, folder: Path):
    """(broken path, the good ModelProto): a fresh export whose ScatterDense says the other layout."""
    model, voxels, coords = check_network(rng, layout, flat=False)
    good = export_scn(model, voxels, coords).model
    broken = onnx.ModelProto()
    broken.CopyFrom(good)
    scatter = [n for n in broken.graph.node if n.op_type == "ScatterDense"][0]
    for attribute in scatter.attribute:
        if attribute.name == "format":
            attribute.s = {"zyx": b"xyz", "xyz": b"zyx"}[layout]
    path = folder / f"broken_{layout}.onnx"
    onnx.save_model(broken, str(path))
    return path, good


def without_format(model: onnx.ModelProto) -> list:
    """Every node as (op, name, inputs, outputs, attributes but ScatterDense's format), and the initializers."""
    nodes = [(n.op_type, n.name, list(n.input), list(n.output),
              sorted(a.SerializeToString() for a in n.attribute if a.name != "format")) for n in model.graph.node]
    return nodes + sorted(t.SerializeToString() for t in model.graph.initializer)


def check_repair_file(repair_file):
    rng = fresh_random()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for layout in rng.sample(["zyx", "xyz"], 2):
            broken, good = damaged_file(rng, layout, folder)
            before = broken.read_bytes()
            repaired = folder / f"repaired_{layout}.onnx"
            what = f"the {layout} network's file whose format says {'xyz' if layout == 'zyx' else 'zyx'}"
            repair_file(str(broken), str(repaired))
            expect(broken.read_bytes() == before, f"{what}: the broken file was changed",
                   hint="read the broken file, write the repaired one to the second path")
            expect(repaired.is_file(), f"{what}: no file at the second path", str(repaired), "nothing",
                   "onnx.save_model(model, repaired)")
            fixed = onnx.load(str(repaired))
            scatter = [n for n in fixed.graph.node if n.op_type == "ScatterDense"]
            formats = [a for n in scatter for a in n.attribute if a.name == "format"]
            expect(len(formats) == 1, f"{what}: ScatterDense's `format` attributes", 1, len(formats),
                   "change the `s` field of the attribute that is there; a second one would leave the parser "
                   "one of two answers")
            problems = check_contract(fixed)
            expect(not problems, f"{what}: the repaired file still breaks the contract", "no problems", problems[:1],
                   "this check damages a zyx and an xyz network: read the format from the graph itself (the "
                   "contract check's message says which axis the BEV view folds into the channels)")
            expect(without_format(fixed) == without_format(good), f"{what}: something besides the format changed",
                   hint="change ScatterDense's format only; every other node, attribute and weight stays as it was")


# ---------------------------------------------------------------------------------------------------
# Exercise 3: coords in the network's order.

def check_to_network_order(to_network_order):
    rng = fresh_random()
    for layout in rng.sample(["zyx", "xyz", "zyx"], 3):
        n = rng.randint(5, 40)
        g = torch.Generator().manual_seed(rng.randint(0, 2**31 - 1))
        bxyz = torch.stack([torch.randint(0, 2, (n,), generator=g), torch.randint(0, 1408, (n,), generator=g),
                            torch.randint(0, 1600, (n,), generator=g), torch.randint(0, 41, (n,), generator=g)], 1)
        bxyz = bxyz.to(torch.int32)
        given = bxyz.clone()
        got = to_network_order(given, layout)
        call = f"to_network_order(coords of {n} voxels, {layout!r})"
        expect(torch.equal(given, bxyz), f"{call} changed the coords it was given",
               hint="build a new tensor (indexing with a list of columns makes a copy)")
        expect(isinstance(got, torch.Tensor), f"{call} should return a torch.Tensor", "torch.Tensor",
               type(got).__name__)
        expected = bxyz if layout == "xyz" else bxyz[:, [0, 3, 2, 1]]
        if torch.equal(got, expected):
            continue
        rows = [bxyz[0].tolist(), expected[0].tolist(), got[0].tolist() if got.dim() == 2 else got.tolist()]
        if got.shape == bxyz.shape and torch.equal(got, bxyz.flip(1)):
            raise NotYet(f"{call}: the batch column moved to the end", rows[1], rows[2],
                         "only the three spatial columns change places; the batch index stays in column 0")
        if layout == "zyx" and torch.equal(got, bxyz):
            raise NotYet(f"{call}: the coords are still x, y, z", rows[1], rows[2],
                         "a zyx network reads (batch, z, y, x)")
        if layout == "xyz" and got.shape == bxyz.shape and torch.equal(got, bxyz[:, [0, 3, 2, 1]]):
            raise NotYet(f"{call}: the coords were reversed for an xyz network", rows[1], rows[2],
                         "these coords are already (batch, x, y, z)")
        raise NotYet(f"{call}: the first row (given {rows[0]})", rows[1], rows[2],
                     "(batch, x, y, z) -> (batch, z, y, x) for zyx; unchanged for xyz")


EXERCISES = [
    Exercise(1, "flatten_handler: the handler of Tensor.flatten", check_flatten_handler, ("flatten_handler",),
             hints=(
                 "a flatten moves no value: which of the contract's six ops changes only a shape?",
                 "write a Reshape node whose `dims` is the output's shape, and only for a tensor the trace knows "
                 "(look at the Reshape handler in helpers/trace/handlers.py)",
                 "if tracer.knows(x): tracer.add_node(\"Reshape\", [tracer.tensor_id(x)], y, dict(dims=list(y.shape)))",
             )),
    Exercise(2, "repair_file: a damaged ScatterDense format, repaired", check_repair_file, ("repair_file",), hints=(
        "run python -m helpers.verify on the broken file first: what does the contract check say is wrong?",
        "load the file with onnx.load, find the ScatterDense node, set its `format` attribute's `s` field, and "
        "save to the second path; the right format depends on the network, so read it from the graph",
        "helpers.layout.layout_from_shape(ScatterDense's input_spatial_shape) says where z (the shortest axis) is; "
        "set attribute.s = layout.encode()",
    )),
    Exercise(3, "to_network_order: coords in the order the network reads", check_to_network_order,
             ("to_network_order",), hints=(
                 "which column never moves?",
                 "index the columns with a list: column 0 first, then the spatial ones in the network's order",
                 "zyx: coords[:, [0, 3, 2, 1]]; xyz: the coords as they are (a copy is fine)",
             )),
]
