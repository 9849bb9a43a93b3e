"""The exercises teach: wrong answers get feedback that names what is wrong, a check never breaks the kernel,
and the correct answer passes afterwards in the same kernel.

The check-cell machinery (helpers/exercises.py) is tested on its own first; then, for notebooks 01 and 02,
a kernel runs the student edition from top to bottom and each exercise is answered wrongly (typical
mistakes, several per exercise), then correctly (the instructor's cell), in that one kernel.
Notebook 03's exercises can be tested the same way with tests/exercise_support.py.
"""
import contextlib

import pytest
import torch
from torch import nn

from helpers.exercises import ClassState, Exercise, Exercises, ListState, NotYet, expect_equal
from tests.exercise_support import StudentKernel, output_text, results_line


# ----------------------------------------------------------------------------------------------------
# The machinery.

def check_double(double):
    for value in (3, 7, -2):
        expect_equal(double(value), 2 * value, f"double({value})", hint="multiply by two")


def make_exercises(**namespace):
    return Exercises("00_test", [Exercise(1, "double", check_double, ("double",))], protect=(torch.Tensor,),
                     namespace=namespace)


def test_a_check_prints_solved_or_what_is_wrong_and_never_raises(capsys):
    cases = [
        ({}, "`double` is not defined"),
        ({"double": lambda v: 6}, "double(7)"),  # a hard-coded answer: right for the first input only
        ({"double": lambda v: v + v if v > 0 else None}, "actual:   None"),
        ({"double": lambda v: 1 / 0}, "ZeroDivisionError"),
        ({"double": lambda v: (_ for _ in ()).throw(NotImplementedError("Exercise 1: hint"))}, "NotImplementedError"),
    ]
    for namespace, feedback in cases:
        exercises = make_exercises(**namespace)
        exercises.check(1)
        text = capsys.readouterr().out
        assert "NOT YET" in text and feedback in text, text
        assert exercises.results() == {"solved": 0, "total": 1}
    exercises = make_exercises(double=lambda v: 2 * v)
    exercises.check(1)
    assert "solved" in capsys.readouterr().out and exercises.results() == {"solved": 1, "total": 1}
    exercises.check(7)  # a typo in the check cell
    assert "no exercise 7" in capsys.readouterr().out and exercises.results() == {"solved": 1, "total": 1}


def test_a_recursion_error_gets_its_own_hint(capsys):
    def forever(value):
        return forever(value)
    make_exercises(double=forever).check(1)
    assert "calls itself without end" in capsys.readouterr().out


def test_a_check_puts_back_a_patched_class_before_and_after(capsys):
    reshape_is_inherited = "reshape" not in torch.Tensor.__dict__
    exercises = make_exercises(double=lambda v: 2 * v)
    torch.Tensor.reshape = lambda self, *shape: None  # an attempt left this behind
    try:
        exercises.check(1)
    finally:
        ClassState(torch.Tensor).restore()
    text = capsys.readouterr().out
    assert "put back first" in text and "torch.Tensor.reshape" in text and "solved" in text
    assert ("reshape" not in torch.Tensor.__dict__) == reshape_is_inherited


def test_class_state_deletes_added_entries_and_restores_changed_ones():
    class Base:
        def hello(self):
            return "base"

    class Child(Base):
        def own(self):
            return "own"

    state = ClassState(Child, label="Child")
    own = Child.__dict__["own"]
    Child.hello = Base.hello  # a "restore" by assignment leaves an entry
    Child.own = lambda self: "patched"
    assert sorted(state.restore()) == ["Child.hello", "Child.own"]
    assert "hello" not in Child.__dict__ and Child.__dict__["own"] is own
    assert state.restore() == []


def test_list_state_brings_back_the_same_list_with_the_same_items():
    class Holder:
        pass
    holder = Holder()
    holder.items = [1, 2]
    original = holder.items
    state = ListState(holder, "items", "holder.items")
    holder.items.append(3)  # aliasing: someone appended to the shared list
    assert state.restore() == ["holder.items (its items)"] and holder.items == [1, 2]
    holder.items = []
    assert state.restore() == ["holder.items (the list object)"] and holder.items is original


def test_hints_come_in_levels_a_nudge_first_then_more_the_last_repeats(capsys):
    levels = ("nudge", "more", "most")
    exercises = Exercises("00_test", [Exercise(1, "double", check_double, ("double",), hints=levels)],
                          namespace={"double": lambda v: (_ for _ in ()).throw(NotImplementedError("Exercise 1: nudge"))})
    exercises.check(1)
    assert "exercises.hint(1)" in capsys.readouterr().out  # a stub's verdict says where more help is
    for level, words in enumerate(levels + ("most",), 1):
        exercises.hint(1)
        text = capsys.readouterr().out
        assert f"hint {min(level, 3)} of 3: {words}" in text, text
    assert "the last hint" in text
    exercises.hint(5)
    assert "no hints for exercise 5" in capsys.readouterr().out


@pytest.mark.parametrize("module", ["exercises_01", "exercises_02", "exercises_03", "exercises_04"])
def test_every_exercise_has_levels_and_its_stub_carries_the_first(module):
    import importlib

    import nbformat

    from tests.conftest import ROOT
    from tests.exercise_support import editions
    exercises = importlib.import_module(f"helpers.{module}").EXERCISES
    stem = {"exercises_01": "01_hooks", "exercises_02": "02_decorator_trace", "exercises_03": "03_export_scn",
            "exercises_04": "04_own_network"}[module]
    cells = [c.source for c in nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4).cells
             if c.cell_type == "code" and editions.BEGIN in c.source]
    for exercise in exercises:
        assert len(exercise.hints) >= 3, f"{stem} exercise {exercise.number}: hints in levels, at least three"
        (cell,) = [c for c in cells if editions.exercise_number(c, stem) == exercise.number]
        first = next(line.strip()[len(editions.HINT):].strip() for line in cell.splitlines()
                     if line.strip().startswith(editions.HINT))
        assert first == exercise.hints[0], f"{stem} exercise {exercise.number}: the stub's hint is not the first level"


def test_notyet_carries_what_expected_actual_and_hint():
    wrong = NotYet("what", 1, 2, "hint")
    assert (wrong.what, wrong.expected, wrong.actual, wrong.hint) == ("what", 1, 2, "hint")


# ----------------------------------------------------------------------------------------------------
# Notebook 01: each exercise answered wrongly (typical mistakes), then correctly, in one kernel.

WRONG_01 = {
    1: [
        ("""
COUNT = 0
def counted(log, prefix):
    def decorator(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            global COUNT
            out = fn(*args, **kwargs)
            log.append(f"{prefix}{COUNT}")
            COUNT += 1
            return out
        return wrapper
    return decorator
""", ["the names in the log", "its own count"]),  # one counter shared by every decorated function
        ("""
def counted(log, prefix):
    def decorator(fn):
        count = 0
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            nonlocal count
            log.append(f"{prefix}{count}")
            count += 1
            fn(*args, **kwargs)
        return wrapper
    return decorator
""", ["returned None", "must return what the original function returns"]),  # forgot `return`
        ("""
def counted(log, prefix):
    def decorator(fn):
        count = 0
        def wrapper(*args, **kwargs):
            nonlocal count
            out = fn(*args, **kwargs)
            log.append(f"{prefix}{count}")
            count += 1
            return out
        return wrapper
    return decorator
""", ["lost its name", "functools.wraps"]),  # no functools.wraps
        ("""
def counted(log, prefix):
    def decorator(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            log.extend(["conv0", "conv1"])
            return fn(*args, **kwargs)
        return wrapper
    return decorator
""", ["the names in the log"]),  # hard-coded names
        ("""
def counted(log, prefix):
    count = 0
    def decorator(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            nonlocal count
            out = fn(*args, **kwargs)
            log.append(f"{prefix}{count}")
            count += 1
            return out
        return wrapper
    return decorator
""", ["the names in the log", "its own count", "same decorator object"]),  # one count per decorator object
        ("""
def counted(log, prefix):
    def decorator(fn):
        count = 0
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            nonlocal count
            log.append(f"{prefix}{count}")  # named when the call starts
            count += 1
            return fn(*args, **kwargs)
        return wrapper
    return decorator
""", ["the right names in the wrong order", "FINISHES"]),
        ("""
def counted(log, prefix):
    def decorator(fn):
        count = 1
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            nonlocal count
            out = fn(*args, **kwargs)
            log.append(f"{prefix}{count}")
            count += 1
            return out
        return wrapper
    return decorator
""", ["one too high", "number 0"]),  # counting from 1
    ],
    2: [
        ("""
@contextlib.contextmanager
def count_calls(owner, name):
    counter = {"calls": 0}
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        counter["calls"] += 1
        return original(*args, **kwargs)
    setattr(owner, name, wrapper)
    try:
        yield counter
    finally:
        setattr(owner, name, original)  # a restore by assignment
""", ["torch.Tensor.__dict__ still holds", "delattr", "the check put back"]),
        ("""
@contextlib.contextmanager
def count_calls(owner, name):
    counter = {"calls": 0}
    own = owner.__dict__.get(name)
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        counter["calls"] += 1
        return original(*args, **kwargs)
    setattr(owner, name, wrapper)
    yield counter  # no try/finally
    if own is None:
        delattr(owner, name)
    else:
        setattr(owner, name, own)
""", ["after an error inside the block", "finally"]),
        ("""
@contextlib.contextmanager
def count_calls(owner, name):
    counter = {"calls": 0}
    own = owner.__dict__.get(name)
    def wrapper(*args, **kwargs):
        counter["calls"] += 1
        return getattr(owner, name)(*args, **kwargs)  # finds the wrapper itself
    setattr(owner, name, wrapper)
    try:
        yield counter
    finally:
        if own is None:
            delattr(owner, name)
        else:
            setattr(owner, name, own)
""", ["calls itself without end", "BEFORE patching"]),
        ("""
@contextlib.contextmanager
def count_calls(owner, name):
    counter = {"calls": 0}
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        counter["calls"] += 1
        return original(*args, **kwargs)
    setattr(owner, name, wrapper)
    yield counter  # never restored
""", ["is still your patch", "nothing put the original back", "the check put back"]),
    ],
    3: [
        ("""
def trace_ops(model, x, targets):
    log = []
    def make(label):
        def wrap(original):
            def wrapper(*args, **kwargs):
                out = original(*args, **kwargs)
                log.append(label)
                return out
            return wrapper
        return wrap
    with contextlib.ExitStack() as stack:
        for owner, name, label in targets:
            stack.enter_context(patched(owner, name, make(label)))
        model(x)
    return log
""", ["labels recorded", "INSIDE a recorded op"]),  # no guard
        ("""
def trace_ops(model, x, targets):
    return ["Block", "permute"]
""", ["labels recorded for a model running"]),  # hard-coded
        ("""
def trace_ops(model, x, targets):
    log, busy = [], False
    def make(label, original):
        def wrapper(*args, **kwargs):
            nonlocal busy
            if busy:
                return original(*args, **kwargs)
            busy = True
            try:
                out = original(*args, **kwargs)
            finally:
                busy = False
            log.append(label)
            return out
        return wrapper
    saved = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in targets]
    for owner, name, label in targets:
        setattr(owner, name, make(label, getattr(owner, name)))
    model(x)  # no finally: a model that raises leaves everything patched
    for owner, name, own in reversed(saved):
        delattr(owner, name) if own is None else setattr(owner, name, own)
    return log
""", ["after a model that raised", "still patched", "the check put back"]),
    ],
}

# ----------------------------------------------------------------------------------------------------
# Notebook 02.

LEAKY = """
def make_leaky_registry(base):
    registry = Registry()
    registry.patches = {patches}

    @registry.register(nn.LeakyReLU, "forward")
    def leaky_relu(tracer, y, module, x):
        tracer.add_node({op!r}, [tracer.tensor_id(x)], y, {{"alpha": {alpha}}})
    return registry
"""
CUSTOM = """
def make_custom_model(op_type, domain, attributes):
    node = helper.make_node({op}, ["x"], ["y"], name="custom0", domain={domain}, **attributes)
    graph = helper.make_graph([node], "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 13)] + {imports})
"""
NAMES = """
class TensorNames:
    def __init__(self):
        self.ids, self.kept = {{}}, []

    def key(self, obj):
        return {key}

    def add(self, obj):
        name = str(len(self.ids))
        self.ids[self.key(obj)] = name
        {keep}
        return name

    def find(self, obj):
        return self.ids.get(self.key(obj))
"""
SPARSE_KEY = "id(obj.features) if isinstance(obj, spconv.SparseConvTensor) else id(obj)"

WRONG_02 = {
    1: [
        (LEAKY.format(patches="base.patches", op="LeakyRelu", alpha="module.negative_slope"),
         ["the toy registry itself changed", "list(base.patches)", "TOY_REGISTRY.patches"]),  # aliasing the list
        (LEAKY.format(patches="list(base.patches)", op="LeakyRelu", alpha="0.01"),
         ["`alpha` attributes", "negative_slope"]),  # a constant slope
        (LEAKY.format(patches="list(base.patches)", op="LeakyReLU", alpha="module.negative_slope"),
         ["expected: ['Conv', 'LeakyRelu', 'Conv', 'LeakyRelu']", "as ONNX spells it"]),  # PyTorch's spelling
        (LEAKY.format(patches="list(base.patches)", op="LeakyRelu", alpha="module.negative_slope").replace(
            "def leaky_relu(tracer, y, module, x)", "def leaky_relu(tracer, module, y, x)"),
         ["raised AttributeError", "handler(tracer, output, module, *inputs)"]),  # parameters in another order
    ],
    2: [
        (CUSTOM.format(op="op_type", domain='""', imports="[]"),
         ["onnx.checker rejects", "No Op registered", "domain=domain"]),  # left in the default domain
        (CUSTOM.format(op="op_type", domain="domain", imports="[]"),
         ["No opset import for domain", "make_operatorsetid(domain, 1)"]),  # domain not imported
        (CUSTOM.format(op='"Scale"', domain='"my.ops"', imports='[helper.make_operatorsetid("my.ops", 1)]'),
         ["(op_type, domain) of the nodes", "not fixed ones"]),  # hard-coded op and domain
    ],
    3: [
        (NAMES.format(key=SPARSE_KEY, keep="pass"), ["has died", "Keep a reference"]),  # no keep-alive
        (NAMES.format(key="id(obj)", keep="self.kept.append(obj)"), ["SAME features", "id(obj.features)"]),  # shell id
        (NAMES.format(key=SPARSE_KEY, keep="self.kept.append(obj)").replace(
            "return self.ids.get(self.key(obj))", "return self.ids[self.key(obj)]"),
         ["raised KeyError", "return None"]),  # a lookup that raises for an unknown object
    ],
}

POISON = {  # run straight in the kernel, outside any check: the next check must put it back
    "01_hooks": "torch.Tensor.view = lambda self, *shape: None",
    "02_decorator_trace": "TOY_REGISTRY.patches.append(TOY_REGISTRY.patches[0])",
}


@pytest.mark.parametrize("stem, wrong", [("01_hooks", WRONG_01), ("02_decorator_trace", WRONG_02)])
def test_wrong_answers_get_feedback_and_the_right_one_then_passes_in_the_same_kernel(stem, wrong):
    with StudentKernel(stem) as kernel:
        numbers = kernel.exercise_numbers()
        assert numbers == sorted(wrong) and len(numbers) >= 3
        first = results_line(kernel.last_cell())  # the student edition ran to its last cell
        assert first["exercises"] == {"solved": 0, "total": len(numbers)}
        for number in numbers:
            assert "NotImplementedError" in kernel.verdict_of_first_run(number)
            assert len(wrong[number]) >= 2
            for source, feedback in wrong[number]:
                text = kernel.try_answer(number, source)
                assert f"Exercise {number}" in text and "NOT YET" in text, text
                for words in feedback:
                    assert words in text, f"exercise {number}: {words!r} not in the feedback:\n{text}"
            if number == 1:
                kernel.run(POISON[stem])
            text = kernel.try_answer(number, kernel.solution(number))
            assert "solved." in text and "NOT YET" not in text, text
            if number == 1:
                assert "put back first" in text, text
        assert kernel.results()["exercises"] == {"solved": len(numbers), "total": len(numbers)}
        leftovers = kernel.run("print(sorted(set(torch.Tensor.__dict__) & {'view', 'reshape', 'permute', 'flatten'}))")
        assert leftovers.strip() == "[]"
