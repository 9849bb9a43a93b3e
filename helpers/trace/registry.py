"""Which methods a trace patches, and the scoped patcher that patches them.

    Registry  - `@registry.register(Class, "method")` binds a handler to a method; nothing is patched yet.
    tracing() - patches every registered method for the duration of a `with` block and puts every
                original back on exit, in reverse order, also when the traced code raises.
A handler has the signature `handler(tracer, output, self, *args, **kwargs)`: it is called after the
original method ran and writes one node (or none) describing what happened.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, List

from helpers.errors import WorkbookError
from helpers.trace.tracer import Tracer


@dataclass
class Patch:
    """One registered method: `owner.name` is replaced by a wrapper that calls `handler`."""
    owner: type
    name: str
    handler: Callable


class Registry:
    """An ordered table of (class, method) -> handler, filled by a decorator factory."""

    def __init__(self):
        self.patches: List[Patch] = []

    def register(self, owner: type, name: str):
        """`@registry.register(nn.ReLU, "forward")` records the handler and returns it unchanged."""
        def decorator(handler: Callable) -> Callable:
            self.patches.append(Patch(owner, name, handler))
            return handler
        return decorator

    def handled_types(self) -> tuple:
        return tuple(p.owner for p in self.patches if p.name == "forward")


def make_wrapper(tracer: Tracer, original: Callable, handler: Callable) -> Callable:
    """The function that stands in for a registered method while tracing."""
    def traced(*args, **kwargs):
        if tracer.busy:  # called from inside another traced op (e.g. permute inside dense): not a node
            return original(*args, **kwargs)
        tracer.busy = True
        try:
            output = original(*args, **kwargs)
            handler(tracer, output, *args, **kwargs)
        finally:
            tracer.busy = False
        return output
    traced.__wrapped__ = original
    traced.patched_by = tracer  # marks a wrapper, so a second trace cannot wrap it again
    return traced


@contextmanager
def tracing(tracer: Tracer, registry: Registry):
    """Patch every registered method for the `with` block; restore the exact originals afterwards."""
    undo = []  # (owner, name, what owner.__dict__ held or None), in the order applied
    try:
        for patch in registry.patches:
            own = patch.owner.__dict__.get(patch.name)  # None when the method is inherited
            if hasattr(own, "patched_by"):  # a trace inside a trace would record every op twice
                raise WorkbookError(f"{patch.owner.__name__}.{patch.name} is already patched by a trace in progress; "
                                    "finish that `with tracing(...)` block before starting another")
            undo.append((patch.owner, patch.name, own))
            setattr(patch.owner, patch.name, make_wrapper(tracer, getattr(patch.owner, patch.name), patch.handler))
        yield tracer
    finally:
        for owner, name, own in reversed(undo):
            if own is None:
                delattr(owner, name)  # the inherited method shows through again
            else:
                setattr(owner, name, own)
