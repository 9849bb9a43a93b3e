"""Notebook 04's exercise checks: the instructor's answers pass, typical wrong answers get feedback that names
the mistake, and the exporter's own registry is left as it was."""
import onnx
import pytest

from helpers import exercises_04
from helpers.exercises import Exercises
from helpers.layout import layout_from_shape
from helpers.trace.handlers import REGISTRY


# --- the instructor's answers (the notebook's solution cells hold the same code) -------------------
def flatten_handler(tracer, y, x, start_dim=0, end_dim=-1):
    if tracer.knows(x):
        tracer.add_node("Reshape", [tracer.tensor_id(x)], y, dict(dims=list(y.shape)))


def repair_file(broken, repaired):
    model = onnx.load(broken)
    for node in model.graph.node:
        if node.op_type == "ScatterDense":
            shape = [a.ints for a in node.attribute if a.name == "input_spatial_shape"][0]
            for attribute in node.attribute:
                if attribute.name == "format":
                    attribute.s = layout_from_shape(shape).encode()
    onnx.save_model(model, repaired)


def to_network_order(coords, layout):
    return coords[:, [0, 3, 2, 1]] if layout == "zyx" else coords.clone()


RIGHT = {1: ("flatten_handler", flatten_handler), 2: ("repair_file", repair_file),
         3: ("to_network_order", to_network_order)}


# --- typical wrong answers, and words the feedback must contain -------------------------------------
def onnx_flatten(tracer, y, x, start_dim=0, end_dim=-1):  # ONNX has a Flatten op; the engine does not
    if tracer.knows(x):
        tracer.add_node("Flatten", [tracer.tensor_id(x)], y, dict(dims=list(y.shape)))


def input_shape(tracer, y, x, start_dim=0, end_dim=-1):
    if tracer.knows(x):
        tracer.add_node("Reshape", [tracer.tensor_id(x)], y, dict(dims=list(x.shape)))


def every_flatten(tracer, y, x, start_dim=0, end_dim=-1):  # also the coords' flatten
    tracer.add_node("Reshape", [tracer.tensor_id(x)], y, dict(dims=list(y.shape)))


def nothing(tracer, y, x, start_dim=0, end_dim=-1):
    pass


def always_zyx(broken, repaired):  # the notebook's file is zyx; the check's second network is not
    model = onnx.load(broken)
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.name == "format":
                attribute.s = b"zyx"
    onnx.save_model(model, repaired)


def appended(broken, repaired):
    model = onnx.load(broken)
    scatter = [n for n in model.graph.node if n.op_type == "ScatterDense"][0]
    shape = [a.ints for a in scatter.attribute if a.name == "input_spatial_shape"][0]
    scatter.attribute.append(onnx.helper.make_attribute("format", layout_from_shape(shape)))
    onnx.save_model(model, repaired)


def in_place(broken, repaired):
    repair_file(broken, broken)
    repair_file(broken, repaired)


WRONG = {
    1: [(onnx_flatten, "op type"), (input_shape, "not the shape it reads"), (every_flatten, "tracer.knows(x)"),
        (nothing, "no node for the flatten")],
    2: [(always_zyx, "still breaks the contract"), (appended, "`format` attributes"), (in_place, "broken file was changed"),
        (lambda broken, repaired: None, "no file at the second path")],
    3: [(lambda c, layout: c.flip(1), "batch column moved"), (lambda c, layout: c, "still x, y, z"),
        (lambda c, layout: c[:, [0, 3, 2, 1]], "reversed for an xyz network")],
}


@pytest.fixture
def book():
    return Exercises("04_own_network", exercises_04.EXERCISES, protect=exercises_04.PROTECT,
                     namespace={"__name__": "a student kernel"})


@pytest.mark.parametrize("number", sorted(WRONG))
def test_wrong_answers_are_named_then_the_right_one_passes(book, number, capsys):
    name, right = RIGHT[number]
    for wrong, words in WRONG[number]:
        for _ in range(3):  # each check draws its layouts at random: three tries meet the one a mistake shows in
            book.namespace[name] = wrong
            book.check(number)
            text = capsys.readouterr().out
            assert "NOT YET" in text, text
            if words in text:
                break
        assert words in text and ("expected" in text or "hint" in text), text
    book.namespace[name] = right
    book.check(number)
    text = capsys.readouterr().out
    assert "solved." in text and "NOT YET" not in text, text
    assert book.results() == {"solved": 1, "total": 3}


def test_a_handler_registered_in_the_workbooks_registry_is_taken_out_again(book, capsys):
    patches = list(REGISTRY.patches)
    import torch
    REGISTRY.register(torch.Tensor, "flatten")(flatten_handler)  # what a student may try in the exercise cell
    book.namespace["flatten_handler"] = flatten_handler
    book.check(1)
    text = capsys.readouterr().out
    assert "solved." in text and "REGISTRY.patches (its items)" in text, text
    assert REGISTRY.patches == patches


def test_missing_and_unfinished_answers(book, capsys):
    book.check(2)
    assert "`repair_file` is not defined" in capsys.readouterr().out

    def stub(*args):
        raise NotImplementedError("Exercise 2: load, change, save")
    book.namespace["repair_file"] = stub
    book.check(2)
    assert "NotImplementedError" in capsys.readouterr().out
    assert book.results() == {"solved": 0, "total": 3}


def test_a_hard_coded_answer_fails(book, capsys):
    import torch
    book.namespace["to_network_order"] = lambda c, layout: torch.tensor([[0, 20, 800, 700]], dtype=torch.int32)
    book.check(3)
    assert "NOT YET" in capsys.readouterr().out


# --- the same, in a live kernel that ran the student edition of notebook 04 from top to bottom -------
WRONG_SOURCES = {
    1: [("def flatten_handler(tracer, y, x, start_dim=0, end_dim=-1):\n    if tracer.knows(x):\n"
         "        tracer.add_node('Flatten', [tracer.tensor_id(x)], y, dict(dims=list(y.shape)))\n",
         ["op type", "Reshape"])],
    2: [("def repair_file(broken, repaired):\n    model = onnx.load(str(broken))\n"
         "    for node in model.graph.node:\n        for a in node.attribute:\n"
         "            if a.name == 'format':\n                a.s = b'zyx'\n"
         "    onnx.save_model(model, str(repaired))\n", ["still breaks the contract", "expected format"])],
    3: [("def to_network_order(coords, layout):\n    return coords.flip(1)\n", ["batch column moved"])],
}


def test_wrong_answers_then_the_right_one_in_one_student_kernel():
    from tests.exercise_support import StudentKernel, results_line
    with StudentKernel("04_own_network") as kernel:
        numbers = kernel.exercise_numbers()
        assert numbers == [1, 2, 3]
        assert results_line(kernel.last_cell())["exercises"] == {"solved": 0, "total": 3}
        for number in numbers:
            assert "NotImplementedError" in kernel.verdict_of_first_run(number)
            for source, feedback in WRONG_SOURCES[number]:
                text = kernel.try_answer(number, f"# Exercise {number}\n" + source)
                assert "NOT YET" in text and all(words in text for words in feedback), text
            text = kernel.try_answer(number, kernel.solution(number))
            assert "solved." in text and "NOT YET" not in text, text
        assert kernel.results()["exercises"] == {"solved": 3, "total": 3}
