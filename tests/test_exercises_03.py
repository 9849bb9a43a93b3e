"""Notebook 03's exercise checks: typical wrong answers get feedback that names the mistake, and the
correct answer passes afterwards with the same Exercises object (as in one kernel)."""
import pytest
import torch

from helpers import exercises_03
from helpers.exercises import Exercises


# --- the instructor's answers (the notebook's solution cells hold the same code) -------------------
def int8_codes(x, amax):
    return torch.clamp(torch.round(x * 127 / amax), -127, 127)


def folded_bias(conv_bias, mean, var, gamma, beta, eps):
    return (conv_bias - mean) * gamma / torch.sqrt(var + eps) + beta


def predict_conv_attributes(paths):
    return [("None" if p.endswith("conv2") else "ReLU", "fp16" if i == 0 else "int8",
             "fp16" if i == len(paths) - 1 else "int8") for i, p in enumerate(paths)]


def zyx_output_grid(grid_xyz, kernel, stride, padding):
    return [(n + 2 * p - (k - 1) - 1) // s + 1 for n, k, s, p in zip(grid_xyz, kernel, stride, padding)][::-1]


RIGHT = {1: ("int8_codes", int8_codes), 2: ("folded_bias", folded_bias),
         3: ("predict_conv_attributes", predict_conv_attributes), 4: ("zyx_output_grid", zyx_output_grid)}

# --- typical wrong answers, and words the feedback must contain -------------------------------------
WRONG = {
    1: [(lambda x, amax: torch.round(x * 127 / amax), "not clipped"),
        (lambda x, amax: torch.clamp(torch.round(x * 128 / amax), -127, 127), "uses 128"),
        (lambda x, amax: torch.clamp(torch.trunc(x * 127 / amax), -127, 127), "truncated"),
        (lambda x, amax: torch.tensor([1.0, 2.0, 3.0]), "shape")],
    2: [(lambda b, m, v, g, be, eps: (b - m) * g / torch.sqrt(v) + be, "eps is missing"),
        (lambda b, m, v, g, be, eps: (b - m) * g / torch.sqrt(v + eps), "beta is missing"),
        (lambda b, m, v, g, be, eps: (b - m) * g / (v + eps) + be, "not by the standard deviation"),
        (lambda b, m, v, g, be, eps: (0 * b - m) * g / torch.sqrt(v + eps) + be, "conv's own bias is missing"),
        (lambda b, m, v, g, be, eps: be + 0 * b, "BatchNorm's formula")],  # no diagnosis fits: the general hint
    3: [(lambda paths: [("ReLU", "int8", "int8")] * len(paths), "activation of"),
        (lambda paths: [("None" if p.endswith("conv2") else "ReLU", "int8", "int8") for p in paths],
         "precision of conv_input.0"),
        (lambda paths: [("None" if p.endswith("conv2") else "ReLU", "fp16" if i == 0 else "int8",
                         "fp16" if i == 0 else "int8") for i, p in enumerate(paths)], "output_precision of"),
        (lambda paths: [("ReLU", "fp16", "int8")] + [("None", "int8", "int8")] * 20,  # BEVFusion's 21, hard-coded
         ("one (activation", "activation of"))],
    4: [(lambda g, k, s, p: [(n + 2 * pp - (kk - 1) - 1) // ss + 1 for n, kk, ss, pp in zip(g, k, s, p)],
         "xyz order"),
        (lambda g, k, s, p: [(n + 2 * pp - (kk - 1) - 1) // ss + 1 for n, kk, ss, pp in zip(g[::-1], k, s, p)],
         "kernel, stride and padding are not"),
        (lambda g, k, s, p: [180, 180, 2], "zyx_output_grid(")],
}


@pytest.fixture
def book():
    return Exercises("03_export_scn", exercises_03.EXERCISES, protect=exercises_03.PROTECT,
                     namespace={"__name__": "a student kernel"})  # not this module: it holds the answers


@pytest.mark.parametrize("number", sorted(WRONG))
def test_wrong_answers_are_named_then_the_right_one_passes(book, number, capsys):
    name, right = RIGHT[number]
    for wrong, words in WRONG[number]:
        book.namespace[name] = wrong
        book.check(number)
        text = capsys.readouterr().out
        words = (words,) if isinstance(words, str) else words
        assert "NOT YET" in text and any(w in text for w in words), text
        assert "expected" in text or "hint" in text, text
    book.namespace[name] = right
    book.check(number)
    text = capsys.readouterr().out
    assert "solved." in text and "NOT YET" not in text, text
    assert book.results() == {"solved": 1, "total": 4}


def test_the_folded_bias_hints_do_not_give_the_formula_away(book, capsys):
    for wrong in (lambda b, m, v, g, be, eps: be + 0 * b, lambda b, m, v, g, be, eps: (0 * b - m) * g / torch.sqrt(v + eps) + be):
        book.namespace["folded_bias"] = wrong
        book.check(2)
        hint = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("hint:")]
        assert hint and not any("sqrt" in line or "(conv_bias - mean)" in line for line in hint), hint


def test_missing_and_unfinished_answers(book, capsys):
    book.check(1)
    assert "`int8_codes` is not defined" in capsys.readouterr().out

    def stub(*args):
        raise NotImplementedError("Exercise 1: round, then clamp")
    book.namespace["int8_codes"] = stub
    book.check(1)
    assert "NotImplementedError" in capsys.readouterr().out
    assert book.results() == {"solved": 0, "total": 4}


def test_a_hard_coded_answer_fails(book, capsys):
    """The inputs change from check to check: an answer copied from one run fails the next."""
    book.namespace["zyx_output_grid"] = lambda *args: [2, 180, 180]
    book.check(4)
    assert "NOT YET" in capsys.readouterr().out


# --- the same, in a live kernel that ran the student edition of notebook 03 from top to bottom -------
WRONG_SOURCES = {
    1: [("def int8_codes(x, amax):\n    return torch.round(x * 127 / amax)\n", ["not clipped", "clamp"]),
        ("def int8_codes(x, amax):\n    return torch.clamp(torch.floor(x * 127 / amax), -127, 127)\n",
         ["floored", "torch.round"])],
    2: [("def folded_bias(b, m, v, g, beta, eps):\n    return (b - m) * g / torch.sqrt(v) + beta\n",
         ["eps is missing"]),
        ("def folded_bias(b, m, v, g, beta, eps):\n    return b - m * g / torch.sqrt(v + eps) + beta\n",
         ["not scaled"])],
    3: [("def predict_conv_attributes(paths):\n    return [('ReLU', 'int8', 'int8') for p in paths]\n",
         ["activation of", "residual"]),
        ("def predict_conv_attributes(paths):\n"
         "    return [('None' if p.endswith('conv2') else 'ReLU', 'int8', 'int8') for p in paths]\n",
         ["precision of conv_input.0", "expected: fp16"])],
    4: [("def zyx_output_grid(g, k, s, p):\n"
         "    return [(n + 2 * q - (kk - 1) - 1) // ss + 1 for n, kk, ss, q in zip(g, k, s, p)]\n",
         ["xyz order", "reverse"]),
        ("def zyx_output_grid(g, k, s, p):\n    return [2, 180, 180]\n", ["NOT YET", "expected"])],
}


def test_wrong_answers_then_the_right_one_in_one_student_kernel():
    from tests.exercise_support import StudentKernel, results_line
    with StudentKernel("03_export_scn") as kernel:
        numbers = kernel.exercise_numbers()
        assert numbers == [1, 2, 3, 4]
        assert results_line(kernel.last_cell())["exercises"] == {"solved": 0, "total": 4}
        for number in numbers:
            assert "NotImplementedError" in kernel.verdict_of_first_run(number)
            for source, feedback in WRONG_SOURCES[number]:
                text = kernel.try_answer(number, f"# Exercise {number}\n" + source)
                assert "NOT YET" in text and all(words in text for words in feedback), text
            text = kernel.try_answer(number, kernel.solution(number))
            assert "solved." in text and "NOT YET" not in text, text
        assert kernel.results()["exercises"] == {"solved": 4, "total": 4}
