"""Which methods a trace patches, and the scoped patcher that patches them.

    Registry  - `@registry.register(Class, "method")` binds a handler to a method; nothing is patched yet.
    tracing() - patches every registered method for the duration of a `with` block and puts every
                original back on exit, in reverse order, also when the traced code raises.
Like torch.fx's _Patcher: an entry is checked when registered; every revert runs even if one of them
fails. The undo record of a patch is written after the original is read and before the patch is set (a
revert of a record whose patch was never set changes nothing), and Ctrl-C is held while the patches are
set and while they are reverted, then raised: an interrupt never leaves a method patched. Only calls from
the thread that runs the trace are recorded; a call from another thread runs the original alone.
A handler has the signature `handler(tracer, output, self, *args, **kwargs)`: it is called after the
original method ran and writes one node (or none) describing what happened.
"""
import inspect
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, List

from helpers.errors import WorkbookError
from helpers.trace.tracer import Tracer


IMMUTABLE_TYPE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: int, str, torch._C.TensorBase ... refuse setattr


def check_patchable(owner, name: str):
    """Raise a WorkbookError unless `owner.name` is a method that tracing() can replace and put back."""
    if not isinstance(owner, type):
        kind = type(owner).__name__
        raise WorkbookError(f"register({owner!r}, {name!r}): expected a class, got an instance of {kind}; "
                            f"register the class, e.g. register({kind}, {name!r})")
    if not hasattr(owner, name):
        raise WorkbookError(f"{owner.__name__}.{name} does not exist; expected a method of {owner.__name__}; "
                            "check the spelling")
    if not callable(getattr(owner, name)):
        raise WorkbookError(f"{owner.__name__}.{name} is not a method (a {type(getattr(owner, name)).__name__}); "
                            "register a method")
    if isinstance(inspect.getattr_static(owner, name), (staticmethod, classmethod)):
        kind = type(inspect.getattr_static(owner, name)).__name__
        raise WorkbookError(f"{owner.__name__}.{name} is a {kind}: a patch would receive no instance and break "
                            "every call through an instance; register an instance method (e.g. forward)")
    if owner.__flags__ & IMMUTABLE_TYPE:
        raise WorkbookError(f"{owner.__name__}.{name} cannot be patched: {owner.__name__} is a built-in type whose "
                            "attributes cannot be set; register a Python class (e.g. torch.Tensor, not TensorBase)")


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
        """`@registry.register(nn.ReLU, "forward")` records the handler and returns it unchanged.

        The entry is checked now, not when tracing starts: `owner.name` must be a method of a class
        whose attributes can be replaced (a typo fails here, before anything is patched)."""
        check_patchable(owner, name)

        def decorator(handler: Callable) -> Callable:
            self.patches.append(Patch(owner, name, handler))
            return handler
        return decorator

    def handled_types(self) -> tuple:
        return tuple(p.owner for p in self.patches if p.name == "forward")


def make_wrapper(tracer: Tracer, original: Callable, handler: Callable) -> Callable:
    """The function that stands in for a registered method while tracing (made in the tracing thread)."""
    tracing_thread = threading.get_ident()

    def traced(*args, **kwargs):
        if threading.get_ident() != tracing_thread:  # another thread's call is not part of this trace
            return original(*args, **kwargs)
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


MISSING = object()  # "owner.__dict__ had no such entry": the method was inherited


def revert(undo: list) -> list:
    """Put back every recorded original, last patch first; one that fails does not stop the rest."""
    errors = []
    for owner, name, own in reversed(undo):
        try:
            if own is MISSING:
                if name in owner.__dict__:  # (a record whose patch was never set: nothing to delete)
                    delattr(owner, name)  # the inherited method shows through again
            else:
                setattr(owner, name, own)
        except Exception as error:
            errors.append(error)
    return errors


@contextmanager
def interrupts_held():
    """Hold Ctrl-C (SIGINT) until the block ends, then raise it as it would have been: a block that sets or
    reverts patches is never cut in half. Outside the main thread Python delivers no SIGINT: nothing to do."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held and callable(previous):
            previous(signal.SIGINT, held[0])  # Python's default handler raises KeyboardInterrupt here


def set_patches(tracer: Tracer, registry: Registry, undo: list) -> None:
    """Patch every registered method, appending one undo record per patch to `undo` before it is set."""
    for patch in registry.patches:
        try:
            original = getattr(patch.owner, patch.name)  # read first: if this fails, nothing was changed
        except AttributeError:
            raise WorkbookError(f"{patch.owner.__name__}.{patch.name} does not exist; expected a method; "
                                "register only existing methods") from None
        if getattr(original, "patched_by", tracer) is not tracer:  # also through a base class's patch
            raise WorkbookError(f"{patch.owner.__name__}.{patch.name} is already patched by a trace in progress; "
                                "finish that `with tracing(...)` block before starting another")
        check_patchable(patch.owner, patch.name)  # (a staticmethod set on the class after registering)
        undo.append((patch.owner, patch.name, patch.owner.__dict__.get(patch.name, MISSING)))  # before setting
        setattr(patch.owner, patch.name, make_wrapper(tracer, original, patch.handler))


@contextmanager
def tracing(tracer: Tracer, registry: Registry):
    """Patch every registered method for the `with` block; restore the exact originals afterwards."""
    undo = []  # (owner, name, what owner.__dict__ held or MISSING), in the order applied
    try:
        with interrupts_held():
            set_patches(tracer, registry, undo)
        yield tracer
    except BaseException as error:  # the traced code (or a patch) failed: restore all, then let it through
        with interrupts_held():
            failures = revert(undo)
        for failure in failures:
            error.add_note(f"also, an original could not be restored: {failure!r}")
        raise
    else:
        with interrupts_held():
            failures = revert(undo)
        if failures:
            raise failures[0]
