"""The checks of notebook 01's exercises (see helpers/exercises.py for how a check cell works).

    1  counted(log, prefix)      a decorator factory whose wrapper counts and names the calls
    2  count_calls(owner, name)  a context manager that patches a method and restores it EXACTLY
    3  trace_ops(model, x, targets)  one trace with a re-entrancy guard, everything restored after

Each check builds its own inputs at random (names, call counts, which method, which model), so only an
answer that does what the exercise asks can pass.
"""
import functools

import torch
from torch import nn

from helpers.exercises import Exercise, NotYet, expect, expect_equal, fresh_random

# What a wrong attempt at these exercises can leave patched; every check cell puts them back.
PROTECT = (torch.Tensor, nn.Module, nn.Linear, nn.ReLU)

PREFIXES = ["conv", "relu", "add", "gemm", "pool", "scatter", "dense", "transpose"]


# ---------------------------------------------------------------------------------------------------
# Exercise 1: a decorator factory that counts and names calls.

def check_counted(counted):
    rng = fresh_random()
    log = []
    prefix, other_prefix, outer_prefix = rng.sample(PREFIXES, 3)
    decorator = counted(log, prefix)
    expect(callable(decorator), f"counted(log, {prefix!r}) should return a decorator (a function)",
           "a function that takes the function to wrap", type(decorator).__name__,
           hint="a decorator factory is a function that returns a decorator: def counted(log, prefix): "
                "def decorator(fn): ...; return decorator")

    def area(width, height=1):
        """Area of a rectangle."""
        return width * height

    def volume(width, height, depth):
        return width * height * depth

    wrapped = decorator(area)
    expect(callable(wrapped), "the decorator should return the wrapped function", "a function",
           type(wrapped).__name__, hint="the decorator returns the wrapper it defines")
    expect_equal(log, [], "the log changed when the function was decorated, before any call",
                 hint="count inside the wrapper, when the function is CALLED")
    other = counted(log, other_prefix)(volume)
    same_prefix = counted(log, prefix)(volume)  # a second function with the same prefix: its own count
    twin = decorator(volume)  # a second function wrapped by the SAME decorator object: its own count too

    def surface(width, height, depth):  # calls a decorated function: that inner call finishes first
        return 2 * (wrapped(width, height=height) + width * depth + height * depth)

    outer = counted(log, outer_prefix)(surface)

    expected, calls = [], {"area": 0, "other": 0, "same": 0, "twin": 0, "outer": 0}
    names = {"area": prefix, "other": other_prefix, "same": prefix, "twin": prefix, "outer": outer_prefix}
    order = list(calls) + [rng.choice(list(calls)) for _ in range(rng.randint(1, 4))]
    rng.shuffle(order)  # every function is called, so a count shared between them shows
    for which in order:
        w, h, d = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        if which == "area":
            result, wanted = wrapped(w, height=h), w * h  # a keyword argument too
        elif which == "outer":
            result, wanted = outer(w, h, d), 2 * (w * h + w * d + h * d)
            expected.append(f"{prefix}{calls['area']}")  # the inner area call finishes before surface does
            calls["area"] += 1
        else:
            result, wanted = {"other": other, "same": same_prefix, "twin": twin}[which](w, h, d), w * h * d
        expected.append(f"{names[which]}{calls[which]}")
        calls[which] += 1
        expect_equal(result, wanted, f"the decorated function returned {result!r} for arguments ({w}, {h}, ...)",
                     hint="the wrapper must return what the original function returns")
    if log != expected:
        raise NotYet("the names in the log after a random sequence of calls", expected, log, diagnose_names(log, expected))
    expect_equal(getattr(wrapped, "__name__", None), "area",
                 "the decorated function lost its name", hint="functools.wraps(fn) copies the name and docstring")
    expect(getattr(wrapped, "__wrapped__", None) is area, "the decorated function does not keep the original",
           "wrapped.__wrapped__ is the original function", getattr(wrapped, "__wrapped__", None),
           hint="functools.wraps(fn) also sets __wrapped__")


def split_name(name) -> tuple:
    """'conv12' -> ('conv', 12); a name without a number -> (name, None)."""
    prefix = str(name).rstrip("0123456789")
    digits = str(name)[len(prefix):]
    return prefix, int(digits) if digits else None


def diagnose_names(log, expected) -> str:
    """The hint for a wrong log: numbers off by one, the right names in another order, or shared counts."""
    if not isinstance(log, list) or len(log) != len(expected):
        return "each call appends one name: prefix + that function's own count"
    got, wanted = [split_name(n) for n in log], [split_name(n) for n in expected]
    if all(g[0] == w[0] and g[1] is not None and g[1] == w[1] + 1 for g, w in zip(got, wanted)):
        return "every number is one too high: a function's first call is number 0"
    if sorted(map(str, log)) == sorted(expected):
        return ("the right names in the wrong order: a name is appended when its call FINISHES, so a decorated "
                "function called inside another one is named before it")
    if [g[0] for g in got] == [w[0] for w in wanted]:
        return ("the prefixes are right, the numbers are not: each decorated function needs its own count, "
                "starting at 0, not one count shared by several functions (two functions wrapped by the same "
                "decorator object included)")
    return "each call appends prefix + that function's own count, starting at 0"


# ---------------------------------------------------------------------------------------------------
# Exercise 2: patch a method inside a with-block, and restore it exactly.

INHERITED = {  # Tensor methods inherited from torch._C.TensorBase: name -> a call of it
    "reshape": lambda t: t.reshape(2, -1), "view": lambda t: t.view(-1, 2), "flatten": lambda t: t.flatten(),
    "abs": lambda t: t.abs(), "neg": lambda t: t.neg(),
}


def check_count_calls(count_calls):
    rng = fresh_random()
    name = rng.choice(sorted(INHERITED))
    call = INHERITED[name]
    expect(name not in torch.Tensor.__dict__, f"torch.Tensor.{name} was patched before the check started")
    inherited = getattr(torch.Tensor, name)
    times = rng.randint(2, 5)
    wanted = [call(torch.arange(4.0) - i) for i in range(times)]  # before the block: a leftover patch cannot count these
    with count_calls(torch.Tensor, name) as counter:
        expect(isinstance(counter, dict) and "calls" in counter, "the with-block should get a dict with a 'calls' entry",
               "{'calls': 0}", counter, hint="yield the counter dict from the context manager")
        inside = name in torch.Tensor.__dict__
        results = [call(torch.arange(4.0) - i) for i in range(times)]
    counted = counter["calls"]  # read at once: after the block nothing may count any more
    leftover = torch.Tensor.__dict__.get(name)
    expect(inside, f"torch.Tensor.{name} was not patched inside the block",
           hint="setattr(owner, name, wrapper) before the yield")
    if leftover is not None and leftover is not inherited:
        raise NotYet(f"after the block, torch.Tensor.{name} is still your patch: nothing put the original back",
                     f"torch.Tensor.{name} as before the block", repr(leftover),
                     hint="the context manager must undo its patch when the block ends (after the yield)")
    for i, result in enumerate(results):
        expect(isinstance(result, torch.Tensor) and torch.equal(result, wanted[i]),
               f"inside the block, the {name} call returned the wrong thing", "the original's result", result,
               hint="the wrapper must call the original and return its result")
    expect_equal(counted, times, f"calls of torch.Tensor.{name} counted in the block",
                 hint="add 1 in the wrapper, at every call")
    if leftover is not None:
        raise NotYet(f"after the block, torch.Tensor.__dict__ still holds {name!r}",
                     f"no entry: {name} is inherited from torch._C.TensorBase, torch.Tensor had none of its own",
                     f"torch.Tensor.__dict__[{name!r}] = {leftover!r}",
                     hint="remember what owner.__dict__ held before patching (None for an inherited method); "
                          "restore by DELETING the entry (delattr) when it held nothing, by assignment otherwise")
    expect(getattr(torch.Tensor, name) is inherited, f"after the block, torch.Tensor.{name} is not the original")

    with count_calls(torch.Tensor, name) as second:  # a second block counts from zero again
        call(torch.arange(4.0))
    expect_equal(second["calls"], 1, "a second with-block counted its one call as", hint="a fresh counter per block")

    # A class's OWN method, and an error inside the block.
    own = nn.ReLU.__dict__["forward"]
    before_error = rng.randint(1, 3)
    error = KeyError(f"raised inside the block ({rng.randint(0, 999)})")
    counter = None
    try:
        with count_calls(nn.ReLU, "forward") as counter:
            for _ in range(before_error):
                nn.ReLU()(torch.ones(2))
            raise error
    except KeyError as caught:
        expect(caught is error, "a different KeyError came out of the block")
    else:
        raise NotYet("the error raised inside the block did not come out of it", "the KeyError", "nothing",
                     hint="let the exception pass (do not return True from __exit__, do not catch it)")
    if nn.ReLU.__dict__["forward"] is not own:
        raise NotYet("after an error inside the block, nn.ReLU.forward is not the original",
                     "nn.ReLU.__dict__['forward'] is the original forward", nn.ReLU.__dict__["forward"],
                     hint="restore in a `finally:` around the yield, so it also runs when the block raises")
    expect_equal(counter["calls"], before_error, "calls of nn.ReLU.forward counted before the error",
                 hint="the wrapper counts every call of the patched method")


# ---------------------------------------------------------------------------------------------------
# Exercise 3: a trace with a re-entrancy guard.

def make_models(rng):
    """Fresh classes: `Inner` is one op that calls permute (and maybe ReLU) inside; `Outer` runs a random sequence."""
    n = rng.randint(2, 5)
    inner_permutes = rng.randint(1, 3)
    inner_relu = rng.random() < 0.5
    sequence = ["inner"] + [rng.choice(["inner", "permute", "relu"]) for _ in range(rng.randint(2, 5))]
    rng.shuffle(sequence)  # at least one op with recorded ops inside, so a missing guard shows

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(n, n)
            self.act = nn.ReLU()

        def forward(self, x):  # x [n, n]
            for _ in range(inner_permutes):
                x = x.permute(1, 0)
            return self.act(self.fc(x)) if inner_relu else self.fc(x)

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Inner()
            self.act = nn.ReLU()

        def forward(self, x):
            for op in sequence:
                x = self.inner(x) if op == "inner" else x.permute(1, 0) if op == "permute" else self.act(x)
            return x

    unguarded = []
    for op in sequence:  # what a trace without the guard records: inner ops first, in the order they finish
        if op == "inner":
            unguarded += ["permute"] * inner_permutes + (["relu"] if inner_relu else []) + ["inner"]
        else:
            unguarded.append(op)
    return Inner, Outer, n, sequence, unguarded


def check_trace_ops(trace_ops):
    rng = fresh_random()
    Inner, Outer, n, sequence, unguarded = make_models(rng)
    labels = {"inner": rng.choice(["Block", "SparseConv", "Stage", "Unit"]) + str(rng.randint(1, 9)),
              "permute": rng.choice(["permute", "Transpose", "perm"]), "relu": rng.choice(["relu", "Relu", "act"])}
    targets = [(Inner, "forward", labels["inner"]), (torch.Tensor, "permute", labels["permute"]),
               (nn.ReLU, "forward", labels["relu"])]
    rng.shuffle(targets)
    inner_forward, relu_forward = Inner.__dict__["forward"], nn.ReLU.__dict__["forward"]
    model, x = Outer(), torch.randn(n, n)
    log = trace_ops(model, x, targets)
    expected = [labels[op] for op in sequence]
    if log != expected:
        hint = "record each op once, when it finishes, in the order the ops of the network run"
        if log == [labels[op] for op in unguarded]:
            hint = ("ops called from INSIDE a recorded op were recorded too: while one recorded op runs, "
                    "every wrapper (one flag shared by all of them) must only compute")
        elif isinstance(log, list) and len(log) > len(expected):
            hint = ("more entries than ops: is the guard one flag shared by all wrappers, "
                    "set before the original runs and cleared after?")
        raise NotYet(f"labels recorded for a model running {sequence}", expected, log, hint)
    expect("permute" not in torch.Tensor.__dict__, "after trace_ops, torch.Tensor.permute is still patched",
           hint="patch inside `with` blocks (contextlib.ExitStack for a list), so everything is put back")
    expect(Inner.__dict__["forward"] is inner_forward and nn.ReLU.__dict__["forward"] is relu_forward,
           "after trace_ops, a forward is not the original", hint="restore every patch, in a finally / with-block")
    expect_equal(trace_ops(model, x, targets), expected, "a second trace of the same model gave",
                 hint="keep the trace state (log, guard) inside trace_ops, fresh on every call")

    class Broken(nn.Module):  # restoring must also happen when the model raises
        def forward(self, x):
            x.permute(1, 0)
            raise ValueError("the model failed")

    try:
        trace_ops(Broken(), x, targets)
    except ValueError:
        pass
    else:
        raise NotYet("the model's ValueError did not come out of trace_ops", hint="do not catch the model's error")
    expect("permute" not in torch.Tensor.__dict__, "after a model that raised, torch.Tensor.permute is still patched",
           hint="the restore must run also when model(x) raises: with-blocks / finally")


EXERCISES = [
    Exercise(1, "counted: a decorator factory that counts and names calls", check_counted, ("counted",), hints=(
        "three functions nested: the factory returns a decorator, the decorator returns a wrapper",
        "a count belongs to ONE decorated function: make it where a function gets wrapped, and change it from "
        "the wrapper with `nonlocal`",
        "in the wrapper: call fn and keep its result, then append prefix + count, add 1, return the result; "
        "functools.wraps(fn) keeps fn's name and docstring",
    )),
    Exercise(2, "count_calls: patch, count, restore exactly", check_count_calls, ("count_calls",), hints=(
        "an inherited method has no entry in the class's own __dict__: look there before you patch",
        "put back exactly what owner.__dict__ held for the name, nothing when it held nothing, also when the "
        "block raises",
        "save owner.__dict__.get(name) before patching; after the yield, in a `finally:`, delattr when it was "
        "None, setattr with the saved entry otherwise",
    )),
    Exercise(3, "trace_ops: a trace with a re-entrancy guard", check_trace_ops, ("trace_ops",), hints=(
        "an op called from inside a recorded op must not be recorded: a wrapper needs to know whether another "
        "one is running",
        "one flag shared by all the wrappers (a variable of trace_ops, changed with `nonlocal`): set while an "
        "original runs; a wrapper that finds it set only computes",
        "clear the flag in a `finally:`; enter `patched(owner, name, ...)` for every target in a "
        "contextlib.ExitStack, so everything is put back, also when model(x) raises",
    )),
]
