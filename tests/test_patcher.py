"""The scoped patcher under faults (issue 11): bad registry entries are refused when registered, and
`tracing()` restores every patch it made, even when patching or restoring one of them fails."""
import os
import signal
import threading

import pytest
import torch
from torch import nn

from helpers.errors import WorkbookError
from helpers.trace.registry import Patch, Registry, tracing
from helpers.trace.tracer import Tracer


def handler(tracer, output, *args):
    pass


class Owner:
    def first(self):
        return "first"

    def second(self):
        return "second"


class Child(Owner):
    pass


def state(*owners):
    return [dict(vars(o)) for o in owners]


@pytest.mark.parametrize("owner,name,words", [
    (nn.ReLU, "forwrad", ["forwrad", "ReLU"]),  # a typo: the method does not exist
    (nn.ReLU, "__constants__", ["__constants__", "not a method"]),  # an attribute, not a method
    (int, "__add__", ["int", "cannot be patched"]),  # a built-in type
    (nn.ReLU(), "forward", ["class"]),  # an instance, not a class
])
def test_register_refuses_entries_that_cannot_be_patched(owner, name, words):
    registry = Registry()
    with pytest.raises(WorkbookError) as err:
        registry.register(owner, name)(handler)
    assert all(w in str(err.value) for w in words) and registry.patches == []


def test_registering_changes_nothing():
    before = state(nn.ReLU, Owner, Child)
    registry = Registry()
    registry.register(Child, "first")(handler)  # inherited: Child.__dict__ must stay without it
    registry.register(nn.ReLU, "forward")(handler)
    assert state(nn.ReLU, Owner, Child) == before


def test_a_patch_that_fails_midway_restores_the_ones_made():
    """An entry that went bad after registering (here: forced in) stops tracing; the earlier patches go back."""
    before = state(Owner, Child)
    registry = Registry()
    registry.register(Owner, "first")(handler)
    registry.register(Child, "second")(handler)
    registry.patches.append(Patch(Child, "vanished", handler))  # bypasses register's check
    with pytest.raises((WorkbookError, AttributeError)):
        with tracing(Tracer(), registry):
            pass
    assert state(Owner, Child) == before and Child().first() == "first"


class Fragile(type):
    """A metaclass whose classes refuse to lose attributes while `broken` is set."""
    broken = False

    def __delattr__(cls, name):
        if Fragile.broken:
            raise RuntimeError(f"cannot restore {cls.__name__}.{name}")
        super().__delattr__(name)


class Leaf(Owner, metaclass=Fragile):
    pass


def test_a_failing_revert_does_not_stop_the_others():
    before = state(Owner)
    registry = Registry()
    registry.register(Owner, "first")(handler)
    registry.register(Leaf, "second")(handler)  # inherited: reverting it means delattr, which will fail
    registry.register(Owner, "second")(handler)
    with pytest.raises(RuntimeError, match="cannot restore Leaf.second"):
        with tracing(Tracer(), registry):
            Fragile.broken = True
    Fragile.broken = False
    assert state(Owner) == before  # the reverts before and after the failing one both ran
    del Leaf.second  # the one that could not be restored


def test_the_traced_error_wins_over_a_revert_error():
    registry = Registry()
    registry.register(Leaf, "second")(handler)
    with pytest.raises(ZeroDivisionError) as err:
        with tracing(Tracer(), registry):
            Fragile.broken = True
            1 / 0
    Fragile.broken = False
    assert "cannot restore" in str(err.value.__notes__ if hasattr(err.value, "__notes__") else err.value.__context__)
    del Leaf.second


# ----------------------------------------------------------------------------- Ctrl-C, nesting, odd methods, threads
class Interrupting(type):
    """A metaclass whose classes press Ctrl-C (a real SIGINT) right after a patch is set (`when="set"`) or
    right after an original is put back (`when="revert"`)."""
    when = None

    def __setattr__(cls, name, value):
        super().__setattr__(name, value)
        patching = hasattr(value, "patched_by")
        if (Interrupting.when == "set" and patching) or (Interrupting.when == "revert" and not patching):
            Interrupting.when = None  # once
            os.kill(os.getpid(), signal.SIGINT)


class Twitchy(metaclass=Interrupting):
    def first(self):
        return "first"

    def second(self):
        return "second"


@pytest.mark.parametrize("when", ["set", "revert"])
def test_ctrl_c_while_patching_or_reverting_leaves_nothing_patched(when):
    before = state(Twitchy)
    registry = Registry()
    for name in ("first", "second"):
        registry.register(Twitchy, name)(handler)
    ran = []
    Interrupting.when = "set" if when == "set" else None
    with pytest.raises(KeyboardInterrupt):  # the interrupt is not lost: it arrives once the patcher is done
        with tracing(Tracer(), registry):
            ran.append(True)  # not reached when Ctrl-C came while the patches were set
            Interrupting.when = when
    assert state(Twitchy) == before and ran == ([] if when == "set" else [True])
    assert Twitchy().first() == "first" and Twitchy().second() == "second"


def test_a_nested_trace_through_an_inherited_method_is_refused():
    before = state(Owner, Child)
    outer, inner = Registry(), Registry()
    outer.register(Owner, "first")(handler)
    inner.register(Child, "first")(handler)  # inherited: Child.__dict__ has no "first", Owner's is the patch
    with tracing(Tracer(), outer):
        with pytest.raises(WorkbookError, match="Child.first is already patched by a trace in progress"):
            with tracing(Tracer(), inner):
                pass
        assert "first" not in vars(Child)
    assert state(Owner, Child) == before


class WithOddMethods:
    @staticmethod
    def tool(x):
        return x

    @classmethod
    def make(cls):
        return cls()


@pytest.mark.parametrize("name,kind", [("tool", "staticmethod"), ("make", "classmethod")])
def test_static_and_class_methods_are_refused(name, kind):
    with pytest.raises(WorkbookError, match=f"WithOddMethods.{name} is a {kind}"):
        Registry().register(WithOddMethods, name)
    assert WithOddMethods().tool(3) == 3 and isinstance(WithOddMethods().make(), WithOddMethods)


def test_calls_from_another_thread_are_not_recorded():
    seen = []
    registry = Registry()
    registry.register(Owner, "first")(lambda tracer, output, self: seen.append(threading.current_thread().name))
    with tracing(Tracer(), registry):
        worker = threading.Thread(target=lambda: Owner().first(), name="worker")
        worker.start()
        worker.join()
        assert Owner().first() == "first"
    assert seen == [threading.main_thread().name]
