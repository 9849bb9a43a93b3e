"""Handlers that mean the same in every graph the workbook writes: the SCN's and the toy model's.

Both exporters register these same functions in their own registry, so a Relu node, a
`.contiguous()` copy and the dims of a permute are handled one way only.
"""
import torch
from torch import nn

from helpers.trace.tracer import Tracer


def relu(tracer: Tracer, y: torch.Tensor, module: nn.ReLU, x: torch.Tensor):
    """nn.ReLU -> a Relu node with no attributes."""
    path = tracer.module_name(module)
    tracer.add_node("Relu", [tracer.tensor_id(x, path)], y, {}, module=path)


def contiguous(tracer: Tracer, y: torch.Tensor, x: torch.Tensor, *args, **kwargs):
    """x.contiguous() -> no node: a memory-layout copy carries the same values, so it gets the same name."""
    tracer.alias(y, x)


def permute_dims(args: tuple, ndim: int) -> list:
    """permute(0, 2, 3, 1), permute((0, 2, 3, 1)) and permute(0, -2, -1, 1) all mean [0, 2, 3, 1]."""
    dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
    return [int(d) % ndim for d in dims]
