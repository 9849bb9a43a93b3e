"""A trace inside a trace is refused with a WorkbookError, and every original method is back afterwards."""
import pytest
import torch
from torch import nn

from helpers.errors import WorkbookError
from helpers.trace.handlers import REGISTRY
from helpers.trace.registry import tracing
from helpers.trace.tracer import Tracer


def owned(patch):
    return patch.owner.__dict__.get(patch.name)


def test_a_trace_inside_a_trace_is_refused_and_everything_is_restored():
    before = [owned(p) for p in REGISTRY.patches]
    with pytest.raises(WorkbookError, match="already patched by a trace in progress"):
        with tracing(Tracer(), REGISTRY):
            with tracing(Tracer(), REGISTRY):
                pass
    assert [owned(p) for p in REGISTRY.patches] == before
    assert not any(hasattr(owned(p), "patched_by") for p in REGISTRY.patches)


def test_traces_one_after_the_other_are_fine():
    for _ in range(2):
        tracer = Tracer()
        with tracing(tracer, REGISTRY):
            x = torch.ones(2)
            tracer.new_tensor(x)
            nn.ReLU()(x)
        assert [n.name for n in tracer.nodes] == ["relu0"]
