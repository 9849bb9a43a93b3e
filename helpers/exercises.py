"""Check cells for the notebook exercises: put things back, try varied inputs, explain, never raise.

In a notebook (each notebook's checks live in helpers/exercises_0N.py):

    from helpers import exercises_01
    exercises = Exercises("01_hooks", exercises_01.EXERCISES, protect=exercises_01.PROTECT)
    ...
    exercises.check(1)        # the check cell after exercise 1: one line
    exercises.hint(1)         # a nudge first; each further call gives the next, fuller hint
    ...
    results = dict(..., exercises=exercises.results())  # {"solved": k, "total": n} in the RESULTS line

A check cell first restores whatever a wrong attempt may have left behind (a patched method of a
class, a registry's list), then calls the exercise's check function with the student's objects, looked
up by name in the notebook. The check function tries the answer on inputs it varies at random, so a
hard-coded answer cannot pass, and raises `NotYet` for the first thing that is wrong. The cell prints
"solved" or "not yet" with what was expected, what arrived and a hint; it never prints the answer and
never raises, so "Run All" goes on to the end and a headless run finishes.

Hints come in levels: the stub of the student edition carries the first (a nudge, the `### HINT:` line of the
exercise cell), and `exercises.hint(N)` prints the next level at each call, the last one the most explicit.
"""
import random
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

THIS_FILE = str(Path(__file__).resolve())


class NotYet(Exception):
    """A wrong answer: what is wrong, the expected and actual values (when they help), and a hint."""

    def __init__(self, what: str, expected: Any = None, actual: Any = None, hint: Optional[str] = None):
        super().__init__(what)
        self.what, self.expected, self.actual, self.hint = what, expected, actual, hint


def expect(condition: bool, what: str, expected: Any = None, actual: Any = None, hint: Optional[str] = None):
    """Raise NotYet(what, ...) unless `condition` holds."""
    if not condition:
        raise NotYet(what, expected, actual, hint)


def expect_equal(actual: Any, expected: Any, what: str, hint: Optional[str] = None):
    """Raise NotYet when actual != expected, showing both."""
    if actual != expected:
        raise NotYet(what, expected, actual, hint)


def fresh_random() -> random.Random:
    """A generator seeded anew on every check, so the inputs differ from one run to the next."""
    return random.Random()


# ---------------------------------------------------------------------------------------------------
# Global state a wrong attempt can leave behind, and how to put it back.

# Attributes every class has, or that Python adds by itself (reading __annotations__ creates it).
IGNORED = {"__annotations__", "__dict__", "__doc__", "__module__", "__weakref__", "__parameters__", "_abc_impl"}

# The first state seen of each protected object, kept for the life of the kernel (a module reload keeps it):
# running the notebook again must not take a state that a wrong attempt left as the new baseline.
_BASELINES: Dict[Tuple[int, str], Any] = globals().get("_BASELINES", {})


def class_label(cls: type) -> str:
    """torch.Tensor, nn.Linear, __main__.Block -> 'torch.Tensor', 'nn.Linear', 'Block'."""
    if cls.__module__.startswith("torch.nn.modules"):
        return f"nn.{cls.__qualname__}"
    if cls.__module__ in ("__main__", "builtins"):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


class ClassState:
    """A class's own attributes (its __dict__) as first seen; `restore()` makes them so again.

    An attribute that was added (a patched inherited method) is deleted, so the inherited one shows
    through again; a changed one gets its original object back.
    """

    def __init__(self, cls: type, label: Optional[str] = None):
        self.cls, self.label = cls, label or class_label(cls)
        self.baseline = _BASELINES.setdefault((id(cls), "__dict__"), (cls, dict(cls.__dict__)))[1]

    def restore(self) -> List[str]:
        """Put the class back as it was; return what had to be put back, e.g. ['torch.Tensor.reshape']."""
        current = dict(self.cls.__dict__)
        fixed = []
        for name in current.keys() - self.baseline.keys() - IGNORED:
            delattr(self.cls, name)
            fixed.append(name)
        for name, original in self.baseline.items():
            if name not in IGNORED and current.get(name, None) is not original:
                setattr(self.cls, name, original)
                fixed.append(name)
        return [f"{self.label}.{name}" for name in sorted(fixed)]


class ListState:
    """`owner.name` is a list (a registry's patches): the same list object, with the same items."""

    def __init__(self, owner: Any, name: str, label: str):
        self.owner, self.name, self.label = owner, name, label
        key = (id(owner), name)
        if key not in _BASELINES:
            items = getattr(owner, name)
            _BASELINES[key] = (owner, items, list(items))
        _, self.items, self.contents = _BASELINES[key]

    def restore(self) -> List[str]:
        fixed = []
        if getattr(self.owner, self.name) is not self.items:
            setattr(self.owner, self.name, self.items)
            fixed.append(f"{self.label} (the list object)")
        if len(self.items) != len(self.contents) or any(a is not b for a, b in zip(self.items, self.contents)):
            self.items[:] = self.contents
            fixed.append(f"{self.label} (its items)")
        return fixed


def protected(thing) -> Any:
    """A class becomes a ClassState; a ClassState or ListState stays as it is."""
    return ClassState(thing) if isinstance(thing, type) else thing


# ---------------------------------------------------------------------------------------------------
# Exercises and their verdicts.

@dataclass
class Exercise:
    """One exercise: `check(*objects)` receives the notebook's objects named in `needs`."""
    number: int
    title: str
    check: Callable
    needs: Tuple[str, ...]
    hints: Tuple[str, ...] = ()  # levels: hints[0] is the stub's nudge, each next one says more


@dataclass
class Verdict:
    number: int
    solved: bool
    text: str  # what the check cell printed


@dataclass
class Exercises:
    """The exercises of one notebook and what has been solved in this kernel."""
    notebook: str
    exercises: Sequence[Exercise]
    protect: Sequence[Any] = ()  # classes (or ClassState / ListState) a check puts back before and after
    namespace: Optional[dict] = None  # where the answers live; default: the globals of the calling cell
    verdicts: Dict[int, Verdict] = field(default_factory=dict)
    hints_shown: Dict[int, int] = field(default_factory=dict)  # exercise number -> levels printed so far

    def __post_init__(self):
        self.by_number = {e.number: e for e in self.exercises}
        self.states = [protected(thing) for thing in self.protect]

    def restore(self) -> List[str]:
        """Put every protected class and list back; return what had to be put back."""
        fixed = []
        for state in self.states:
            fixed += state.restore()
        return fixed

    def check(self, number: int, namespace: Optional[dict] = None) -> None:
        """Run exercise `number`'s check on the notebook's answer; print the verdict; never raise."""
        exercise = self.by_number.get(number)
        if exercise is None:
            print(f"There is no exercise {number!r} in {self.notebook}: its exercises are {sorted(self.by_number)}.")
            return
        namespace = namespace or self.namespace or sys._getframe(1).f_globals
        lines = [f"Exercise {number} ({exercise.title}):"]
        before = self.restore()
        if before:
            lines.append(f"  (put back first, left patched by an earlier cell: {', '.join(before)})")
        try:
            missing = [name for name in exercise.needs if name not in namespace]
            if missing:
                raise NotYet(f"`{missing[0]}` is not defined", hint="run the exercise cell above first, then this one")
            exercise.check(*[namespace[name] for name in exercise.needs])
            solved = True
        except NotYet as wrong:
            solved = False
            lines += describe(wrong)
            if exercise.hints:
                lines.append(f"  more:     exercises.hint({number}) gives a hint, and more at each call")
        except NotImplementedError as stub:
            solved = False
            lines.append("  problem:  the exercise cell still raises NotImplementedError: replace that line with your code.")
            if str(stub):
                lines.append(f"  hint:     {stub}")
            if exercise.hints:
                lines.append(f"  more:     exercises.hint({number}) gives a hint, and more at each call")
        except RecursionError:
            solved = False
            lines.append("  problem:  your code calls itself without end (RecursionError).")
            lines.append("  hint:     a wrapper must call the original it saved BEFORE patching, not look the name "
                         "up again at call time (that finds the wrapper itself).")
        except Exception as error:  # the student's code raised: show where, not a 30-line traceback
            solved = False
            lines.append(f"  problem:  your code raised {type(error).__name__}: {error}")
            lines.append(f"  where:    {where(error)}")
        finally:
            after = self.restore()
        if after:
            lines.append(f"  (the check put back what the attempt left patched: {', '.join(after)})")
        lines[0] += " solved." if solved else " NOT YET."
        solved_count = sum(v.solved for n, v in self.verdicts.items() if n != number) + solved
        lines.append(f"  [{solved_count} of {len(self.exercises)} exercises of {self.notebook} solved]")
        text = "\n".join(lines)
        self.verdicts[number] = Verdict(number, solved, text)
        print(text)

    def hint(self, number: int) -> None:
        """Print the next level of exercise `number`'s hints (the first call: the nudge); never raise."""
        exercise = self.by_number.get(number)
        if exercise is None or not exercise.hints:
            known = sorted(n for n, e in self.by_number.items() if e.hints)
            print(f"There are no hints for exercise {number!r} in {self.notebook}: exercises with hints are {known}.")
            return
        level = min(self.hints_shown.get(number, 0), len(exercise.hints) - 1)  # the last level repeats
        self.hints_shown[number] = level + 1
        levels = len(exercise.hints)
        more = (f"more: exercises.hint({number})" if level + 1 < levels else "that is the last hint")
        print(f"Exercise {number}, hint {level + 1} of {levels}: {exercise.hints[level]}\n  ({more})")

    def results(self) -> Dict[str, int]:
        """{"solved": k, "total": n} for the notebook's RESULTS line."""
        return {"solved": sum(v.solved for v in self.verdicts.values()), "total": len(self.exercises)}


def describe(wrong: NotYet) -> List[str]:
    lines = [f"  problem:  {wrong.what}"]
    if wrong.expected is not None or wrong.actual is not None:
        lines.append(f"  expected: {short(wrong.expected)}")
        lines.append(f"  actual:   {short(wrong.actual)}")
    if wrong.hint:
        lines.append(f"  hint:     {wrong.hint}")
    return lines


def short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + " ..."


def where(error: BaseException) -> str:
    """The deepest line of the traceback that is not in this file (usually a line of the student's cell)."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if str(Path(f.filename).resolve()) != THIS_FILE]
    cells = [f for f in frames if in_a_cell(f.filename)]
    if not (cells or frames):
        return "(no line to show)"
    frame = (cells or frames)[-1]
    name = "your cell" if in_a_cell(frame.filename) else Path(frame.filename).name
    return f"at {name}, line {frame.lineno}: {(frame.line or '').strip()}"


def in_a_cell(filename: str) -> bool:
    """IPython compiles a cell as /tmp/ipykernel_<pid>/<hash>.py (or <ipython-input-...>)."""
    return "ipykernel_" in filename or filename.startswith("<ipython-input")
