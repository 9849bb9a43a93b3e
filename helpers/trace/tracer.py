"""The state of one trace: the nodes, the initializers and the names of the tensors.

    Tracer  - nodes, initializers, the obj_to_tensor_id map, a keep-alive list and one counter per op
              type. It lives on an object, so two traces never share state.
    Node    - one recorded op: what the ONNX node will hold, plus `info` for people.
    check_supported(model, registry) - every leaf module has a handler, or a clear error before tracing.
"""
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

import torch
from torch import nn

from helpers.errors import WorkbookError

if TYPE_CHECKING:  # the registry module imports this one
    from helpers.trace.registry import Registry

# ONNX op type -> prefix of its node names: conv0, conv1, add0, relu0, scatter0, ...
NODE_PREFIX = {"SparseConvolution": "conv", "Add": "add", "Relu": "relu", "ScatterDense": "scatter",
               "Transpose": "transpose", "Reshape": "reshape"}


@dataclass
class Node:
    """One recorded op: what the ONNX node will hold, plus `info` for people (module path, shapes)."""
    op: str
    name: str
    inputs: List[str]
    outputs: List[str]
    attributes: Dict[str, Any] = field(default_factory=dict)
    info: Dict[str, Any] = field(default_factory=dict)

    def __str__(self):
        """e.g. `conv5  SparseConvolution  9 -> 10  [1440, 1440, 41] -> [720, 720, 21]  encoder_layers...`"""
        tensors = [i for i in self.inputs if i.isdigit()]  # weights and biases are initializers, not tensors
        line = f"{self.name:<11} {self.op:<17} {','.join(tensors):>5} -> {','.join(self.outputs):<3}"
        if "spatial" in self.info:
            line += f"  {self.info['spatial'][0]} -> {self.info['spatial'][1]}"
        if "voxels" in self.info:
            line += f"  {self.info['voxels'][0]} -> {self.info['voxels'][1]} voxels"
        return line + (f"  {self.info['module']}" if self.info.get("module") else "")


class Tracer:
    """The state of one trace. `on_node(node, output)` is called as each node is recorded."""

    def __init__(self, model: Optional[nn.Module] = None, on_node: Optional[Callable] = None,
                 dynamic_ranges: Optional[dict] = None, layout: str = "xyz", output_bound: int = 200000,
                 module_names: Optional[Dict[int, str]] = None):
        self.nodes: List[Node] = []
        self.initializers: Dict[str, torch.Tensor] = {}  # name -> tensor, turned into fp16 bytes later
        self.obj_to_tensor_id: Dict[int, str] = {}  # id(tensor) -> "0", "1", ...
        self.tensor_count = 0  # names given so far
        self.keep_alive: List[torch.Tensor] = []  # holds every named tensor so its id() is never reused
        self.counters: Counter = Counter()  # one counter per op type: conv0, conv1, add0, ...
        if module_names is None:  # id(module) -> "encoder_layers.encoder_layer1.0.conv1"
            module_names = {id(m): n for n, m in model.named_modules()} if model is not None else {}
        self.module_names = module_names
        self.on_node = on_node
        self.dynamic_ranges = dynamic_ranges or {}  # module -> int8 attributes; empty for an fp16 graph
        self.layout = layout  # "xyz" or "zyx": the ScatterDense format
        self.output_bound = output_bound  # the engine's cap on output voxels of each conv
        self.busy = False  # re-entrancy guard: True while a traced op runs

    def new_tensor(self, tensor: torch.Tensor) -> str:
        """Give a tensor the next name, "0", "1", ... in trace order."""
        name = str(self.tensor_count)
        self.tensor_count += 1
        self.obj_to_tensor_id[id(tensor)] = name
        self.keep_alive.append(tensor)
        return name

    def alias(self, new: torch.Tensor, old: torch.Tensor):
        """`new` carries the same values as `old` (a .contiguous() copy): same name, no node."""
        if new is not old and self.knows(old):
            self.obj_to_tensor_id[id(new)] = self.obj_to_tensor_id[id(old)]
            self.keep_alive.append(new)

    def knows(self, tensor) -> bool:
        return id(tensor) in self.obj_to_tensor_id

    def tensor_id(self, tensor: torch.Tensor, user: str = "an op") -> str:
        """The name of a tensor seen before; an unknown tensor means an op ran untraced."""
        if not self.knows(tensor):
            raise WorkbookError(f"{user} reads a tensor {tuple(tensor.shape)} that no traced op produced; "
                                "register a handler for the op that made it (helpers.trace.handlers)")
        return self.obj_to_tensor_id[id(tensor)]

    def add_initializer(self, name: str, tensor: torch.Tensor) -> str:
        self.initializers[name] = tensor.detach()
        return name

    def next_index(self, op: str) -> int:
        index = self.counters[op]
        self.counters[op] += 1
        return index

    def add_node(self, op: str, inputs: List[str], output: torch.Tensor, attributes: dict, index=None,
                 **info) -> Node:
        """Record a node whose single output is `output`; its name is the op's prefix + counter."""
        index = self.next_index(op) if index is None else index
        node = Node(op, f"{NODE_PREFIX.get(op, op.lower())}{index}", inputs, [self.new_tensor(output)],
                    attributes, info)
        self.nodes.append(node)
        if self.on_node is not None:
            self.on_node(node, output)
        return node

    def module_name(self, module: nn.Module) -> str:
        return self.module_names.get(id(module), type(module).__name__)


# Leaf modules that write no node: their forward passes features through or is part of a traced op.
PASS_THROUGH = (nn.Identity,)


def check_supported(model: nn.Module, registry: "Registry", allowed: tuple = ()) -> Dict[int, str]:
    """Every module's path by id(); raises for a leaf module the exporter has no handler for.

    One walk down the module tree; the inside of a handled module (a quantizer in a conv) is its
    handler's business, so the walk does not go there.
    """
    known = registry.handled_types() + PASS_THROUGH + tuple(allowed)
    names: Dict[int, str] = {}

    def visit(module: nn.Module, path: str):
        names[id(module)] = path
        if isinstance(module, known):
            return
        children = list(module.named_children())
        if not children:  # a leaf that computes something
            hint = " (fold it first: helpers.quant.fuse.fold_bn)" if isinstance(module, nn.BatchNorm1d) else ""
            raise WorkbookError(f"module '{path}' of type {type(module).__name__} has no ONNX handler{hint}; "
                                f"write one with @REGISTRY.register({type(module).__name__}, 'forward') "
                                "in helpers.trace.handlers")
        for name, child in children:
            visit(child, f"{path}.{name}" if path else name)
    visit(model, "")
    return names
