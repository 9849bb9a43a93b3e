"""The checks of notebook 02's exercises (see helpers/exercises.py for how a check cell works).

    1  make_leaky_registry(base)   a handler for a new toy op (nn.LeakyReLU -> ONNX LeakyRelu), in a copy of a registry
    2  make_custom_model(op_type, domain, attributes)   a custom op that passes onnx.checker
    3  TensorNames                 obj_to_tensor_id without the id-reuse trap, sparse tensors named by their features

Each check builds its own inputs at random (slopes, channels, op names, domains, attributes, tensors).
"""
import numpy as np
import onnx
import onnxruntime as ort
import spconv.pytorch as spconv
import torch
from onnx import helper
from torch import nn

from helpers import toy
from helpers.exercises import Exercise, ListState, NotYet, expect, expect_equal, fresh_random

# What a wrong attempt can leave changed; every check cell puts it back.
PROTECT = (torch.Tensor, nn.Module, nn.Conv2d, nn.Linear, nn.ReLU, nn.LeakyReLU, toy.ToyAdd,
           ListState(toy.TOY_REGISTRY, "patches", "TOY_REGISTRY.patches"))


# ---------------------------------------------------------------------------------------------------
# Exercise 1: a handler for a new op, in a copy of the toy registry.

def check_leaky_registry(make_leaky_registry):
    rng = fresh_random()
    base = toy.TOY_REGISTRY
    before = list(base.patches)
    registry = make_leaky_registry(base)
    expect(hasattr(registry, "patches") and hasattr(registry, "register"),
           "make_leaky_registry should return a Registry", "a helpers Registry", type(registry).__name__)
    if len(base.patches) != len(before) or any(a is not b for a, b in zip(base.patches, before)):
        raise NotYet(f"the toy registry itself changed: it now has {len(base.patches)} patches, it had {len(before)}",
                     hint="`new.patches = base.patches` makes both names point at ONE list, so registering on the "
                          "new registry changes the toy one; copy it: list(base.patches)")
    expect(registry.patches is not base.patches, "the new registry shares its patches list with the toy registry",
           hint="copy the list: list(base.patches)")
    expect(nn.LeakyReLU in registry.handled_types(), "the new registry has no handler for nn.LeakyReLU's forward",
           hint="@registry.register(nn.LeakyReLU, 'forward') above the handler")
    kept = [(p.owner, p.name) for p in registry.patches if p.owner is not nn.LeakyReLU]
    expect_equal(kept, [(p.owner, p.name) for p in before], "the toy patches in the new registry",
                 hint="start from all of the base registry's patches, in order")

    channels, size = rng.randint(2, 6), rng.randint(4, 7)
    slopes = [round(rng.uniform(0.05, 0.5), 3), round(rng.uniform(0.05, 0.5), 3)]
    with torch.random.fork_rng():
        torch.manual_seed(rng.randint(0, 10_000))
        net = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.LeakyReLU(slopes[0]),
                            nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(slopes[1])).eval()
        x = torch.randn(1, 3, size, size)
    try:
        proto = toy.export_toy(net, x, registry=registry)
    except (AttributeError, TypeError) as error:  # most often: the handler's parameters in another order
        raise NotYet(f"exporting with your registry raised {type(error).__name__}: {error}",
                     hint="a handler is called as handler(tracer, output, module, *inputs): the output first, then "
                          "the module, then what the module received; check the order of your parameters")
    ops = [n.op_type for n in proto.graph.node]
    expect_equal(ops, ["Conv", "LeakyRelu", "Conv", "LeakyRelu"], "the ops of Conv -> LeakyReLU -> Conv -> LeakyReLU",
                 hint="one node per LeakyReLU call, op type spelled as ONNX spells it (see onnx.ai/onnx/operators)")
    alphas = [helper.get_attribute_value(a) for n in proto.graph.node if n.op_type == "LeakyRelu"
              for a in n.attribute if a.name == "alpha"]
    expect(len(alphas) == 2 and np.allclose(alphas, slopes, atol=1e-6),
           "the LeakyRelu nodes' `alpha` attributes, for two modules with random slopes", slopes, alphas,
           hint="ONNX calls the slope `alpha`; take it from the module (module.negative_slope), not a constant")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as error:
        raise NotYet("onnx.checker rejects the graph", "the checker passes", " ".join(str(error).split()[:40]),
                     hint="a node's inputs must be names given by earlier nodes: tracer.tensor_id(x) looks the "
                          "input's name up; tracer.new_tensor(x) would give it a new name no node produces")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = net(x).numpy()
    error = float(np.abs(session.run(None, {"0": x.numpy()})[0] - expected).max())
    expect(error < 1e-5, "onnxruntime's output differs from PyTorch's", "max abs error < 1e-5", f"{error:.3g}",
           hint="the node's input must be the name of the tensor the module received: tracer.tensor_id(x)")


# ---------------------------------------------------------------------------------------------------
# Exercise 2: a custom op that passes onnx.checker.

OP_NAMES = ["ScatterDense", "VoxelPool", "SparseMaxPool", "PillarScatter", "Shift", "Voxelize"]
DOMAINS = ["spconv", "my.ops", "lidar.ops", "com.example"]


def random_attributes(rng) -> dict:
    return {"factor": round(rng.uniform(0.5, 4.0), 2), "kernel": [rng.randint(1, 5)] * 3,
            "mode": rng.choice(["xyz", "zyx"]), "bound": rng.randint(1000, 200000)}


def same_value(got, wanted) -> bool:
    """An attribute as read back equals the value passed in (floats are stored as float32)."""
    if isinstance(wanted, list):
        return isinstance(got, list) and len(got) == len(wanted) and all(same_value(g, w) for g, w in zip(got, wanted))
    if isinstance(wanted, float):
        return isinstance(got, float) and abs(got - wanted) <= 1e-6 * max(1.0, abs(wanted))
    return type(got) is type(wanted) and got == wanted


def checker_problem(model):
    try:
        onnx.checker.check_model(model, full_check=True)
        return None
    except onnx.checker.ValidationError as error:
        return str(error).strip().splitlines()[0]


def check_custom_model(make_custom_model):
    rng = fresh_random()
    for _ in range(2):  # two different ops, domains and attribute sets
        op_type, domain, attributes = rng.choice(OP_NAMES), rng.choice(DOMAINS), random_attributes(rng)
        call = f"make_custom_model({op_type!r}, {domain!r}, {attributes})"
        model = make_custom_model(op_type, domain, dict(attributes))
        expect(isinstance(model, onnx.ModelProto), f"{call} should return a ModelProto", "onnx.ModelProto",
               type(model).__name__, hint="helper.make_model(graph, opset_imports=[...])")
        problem = checker_problem(model)
        if problem:
            hint = "read the checker's message"
            if problem.startswith("No Op registered"):
                hint = ("the checker looked the op up in a domain it knows (ONNX's own) and did not find it: "
                        "put the node in its own domain, make_node(..., domain=domain)")
            elif problem.startswith("No opset import for domain"):
                hint = "every domain a node uses must be imported: helper.make_operatorsetid(domain, 1) in opset_imports"
            raise NotYet(f"onnx.checker rejects the model of {call}", "the checker passes", problem, hint)
        nodes = [(n.op_type, n.domain) for n in model.graph.node]
        expect_equal(nodes, [(op_type, domain)], f"(op_type, domain) of the nodes of {call}",
                     hint="one node, with the op type and domain passed in (not fixed ones)")
        got = {a.name: helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
        got = {k: v.decode() if isinstance(v, bytes) else v for k, v in got.items()}
        expect(got.keys() == attributes.keys() and all(same_value(got[k], attributes[k]) for k in attributes),
               f"the node's attributes for {call}", attributes, got, hint="make_node(..., **attributes)")
        expect(domain in {o.domain for o in model.opset_import}, f"the model does not import {domain!r}")
        default = helper.make_model(model.graph, opset_imports=[helper.make_operatorsetid("", 13)])
        default.graph.node[0].domain = ""
        expect(checker_problem(default) is not None, f"the checker accepts {op_type} in the default domain",
               hint="(a problem of the check, not of your answer)")


# ---------------------------------------------------------------------------------------------------
# Exercise 3: obj_to_tensor_id without the id-reuse trap.

def sparse_tensor(rng, voxels: int, channels: int) -> spconv.SparseConvTensor:
    coords = torch.tensor(sorted({(0, rng.randrange(8), rng.randrange(8), rng.randrange(8)) for _ in range(voxels)}),
                          dtype=torch.int32)  # [N, 4] batch, z, y, x
    return spconv.SparseConvTensor(torch.randn(len(coords), channels), coords, [8, 8, 8], 1)


def check_tensor_names(TensorNames):
    rng = fresh_random()
    names = TensorNames()
    kept = [torch.randn(rng.randint(1, 4)) for _ in range(rng.randint(2, 5))]
    given = [names.add(t) for t in kept]
    expect_equal(given, [str(i) for i in range(len(kept))], f"the names given to {len(kept)} new tensors",
                 hint='"0", "1", ... in the order add() is called, as strings')
    found = [names.find(t) for t in kept]
    expect_equal(found, given, "find() of the tensors just named", hint="find(obj) returns the name add(obj) gave")
    stranger = torch.randn(2)
    try:
        unknown = names.find(stranger)
    except KeyError as error:
        raise NotYet(f"find() of a tensor that was never added raised KeyError: {error}", None, "KeyError",
                     hint="an unknown object has no name: find() should return None, not raise")
    expect(unknown is None, "find() of a tensor that was never added", None, unknown,
           hint="an unknown object has no name: return None")

    for step in range(200):  # name a temporary that nobody else keeps, then make a new tensor of the same kind
        names.add(torch.randn(3))
        fresh = torch.randn(3)
        clash = names.find(fresh)
        if clash is not None:
            raise NotYet(f"a brand-new tensor was found under the name {clash!r}, given to a tensor that has "
                         "died since", None, repr(clash),
                         hint="id() is unique only among LIVING objects: once a named tensor dies, its id can be "
                              "handed to a new one. Keep a reference to every object you name (a keep-alive list)")
        del fresh

    sp = sparse_tensor(rng, rng.randint(3, 9), rng.randint(1, 4))
    name = names.add(sp)
    same_features = sp.replace_feature(sp.features)  # a new shell around the same features
    expect(same_features is not sp and same_features.features is sp.features, "(a problem of the check)")
    expect_equal(names.find(same_features), name, "find() of a new SparseConvTensor shell around the SAME features",
                 hint="spconv makes new shells all the time: name a SparseConvTensor by id(obj.features)")
    expect_equal(names.find(sp.features), name, "find() of the features tensor of a named SparseConvTensor",
                 hint="the key of a SparseConvTensor is the id of its features")
    expect(names.find(sp.replace_feature(sp.features * 2)) is None,
           "a shell around NEW features was found under a name", hint="only the same features share a name")


EXERCISES = [
    Exercise(1, "make_leaky_registry: a handler for nn.LeakyReLU in a copy of the toy registry",
             check_leaky_registry, ("make_leaky_registry",), hints=(
                 "the toy registry must stay as it is: the new one starts from a copy of what it holds",
                 "register a handler for nn.LeakyReLU's forward, shaped like the toy handlers of section 1: "
                 "handler(tracer, output, module, x)",
                 "copy with list(base.patches); the handler adds one node, op type spelled as ONNX spells it, input "
                 "tracer.tensor_id(x), the module's slope as the attribute ONNX calls `alpha`",
             )),
    Exercise(2, "make_custom_model: a custom op that passes onnx.checker", check_custom_model, ("make_custom_model",),
             hints=(
                 "onnx.checker knows the ops of the domains it knows: where should an op of your own live?",
                 "give the node a domain of its own, and make the model import every domain its nodes use",
                 "make_node(..., domain=domain, **attributes); opset_imports holds helper.make_operatorsetid for \"\" "
                 "and for the domain",
             )),
    Exercise(3, "TensorNames: obj_to_tensor_id without the id-reuse trap", check_tensor_names, ("TensorNames",),
             hints=(
                 "id() is unique only among living objects: what must TensorNames do so that a named object "
                 "cannot die?",
                 "a dict from key to name, and a list that holds every object named; spconv makes new "
                 "SparseConvTensor shells around the same features",
                 "key: id(obj.features) for a SparseConvTensor, id(obj) otherwise; add: the next name "
                 "str(len(...)), stored and the object kept; find: the same key, None when absent",
             )),
]
