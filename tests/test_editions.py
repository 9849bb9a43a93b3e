"""tools/editions.py: the student edition keeps every cell but the solutions, which become stubs."""
import ast

import nbformat
import pytest

from tests.conftest import ROOT
from tests.exercise_support import editions

INSTRUCTOR = '''# Exercise 4: a title
def f(x):
    """Docstring stays."""
    ### BEGIN SOLUTION
    ### HINT: double it
    y = x * 2
    return y
    ### END SOLUTION


class C:
    def g(self):
        ### BEGIN SOLUTION
        return 1
        ### END SOLUTION
'''

STUDENT = '''# Exercise 4: a title
def f(x):
    """Docstring stays."""
    raise NotImplementedError('Exercise 4: double it')


class C:
    def g(self):
        raise NotImplementedError('Exercise 4: write your answer here')
'''


def test_a_block_becomes_one_stub_at_the_indent_of_begin_with_its_hint():
    assert editions.strip_solutions(INSTRUCTOR) == STUDENT
    assert editions.solution_lines(INSTRUCTOR) == ["    y = x * 2", "    return y", "        return 1"]
    namespace = {}
    exec(STUDENT, namespace)
    with pytest.raises(NotImplementedError, match="Exercise 4: double it"):
        namespace["f"](1)


def test_a_cell_without_markers_is_unchanged():
    source = "x = 1  # Exercise 3 is mentioned, but there is no solution here\n"
    assert editions.strip_solutions(source) == source


@pytest.mark.parametrize("source, message", [
    ("# Exercise 1\n### BEGIN SOLUTION\nx = 1\n", "without `### END SOLUTION`"),
    ("# Exercise 1\nx = 1\n### END SOLUTION\n", "without `### BEGIN SOLUTION`"),
    ("# Exercise 1\n### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "inside an open solution block"),
    ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "needs exactly one `# Exercise N`"),
    ("# Exercise 1\n# Exercise 2\n### BEGIN SOLUTION\n### END SOLUTION\n", "needs exactly one `# Exercise N`"),
    ("# Exercise 1\n### BEGIN SOLUTION\nx = 1\n### HINT: late\n### END SOLUTION\n", "must come right after"),
])
def test_broken_markers_are_named_with_their_cell_and_line(source, message):
    with pytest.raises(editions.EditionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        editions.strip_solutions(source, "nb cell 7")


def test_markers_in_a_markdown_cell_are_refused():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("### BEGIN SOLUTION\nanswer\n### END SOLUTION")])
    with pytest.raises(editions.EditionError, match="markdown cell"):
        editions.student_notebook(nb, "x.ipynb")


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    assert editions.main(["--out", str(out)]) == 0  # what `make student` runs
    return out


def test_make_student_writes_the_same_file_names(student_dir):
    assert sorted(p.name for p in student_dir.glob("*.ipynb")) == sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")))
def test_no_solution_line_survives_in_the_student_edition(student_dir, name):
    instructor = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    student = nbformat.read(student_dir / name, as_version=4)
    nbformat.validate(student)
    assert len(student.cells) == len(instructor.cells)
    solutions, elsewhere = set(), set()  # solution lines; lines that also appear outside any solution
    for cell in instructor.cells:
        inside = editions.solution_lines(cell.source)
        solutions.update(line.strip() for line in inside)
        elsewhere.update(line.strip() for line in cell.source.splitlines() if line not in inside)
    secret = {line for line in solutions - elsewhere if line and not line.startswith("#")}
    stubs = 0
    for index, (before, after) in enumerate(zip(instructor.cells, student.cells)):
        assert after.cell_type == before.cell_type
        if after.cell_type == "code":
            assert after.outputs == [] and after.execution_count is None
        for number, line in enumerate(after.source.splitlines(), 1):
            assert line.strip() not in secret, f"{name} cell {index} line {number} is a solution line: {line!r}"
            assert editions.BEGIN not in line and editions.END not in line and editions.HINT not in line
        if editions.BEGIN not in before.source:
            assert after.source == before.source, f"{name} cell {index} changed but holds no solution"
            continue
        number = editions.exercise_number(before.source, name)
        stub_lines = [line for line in after.source.splitlines() if "raise NotImplementedError(" in line]
        assert stub_lines and all(f"Exercise {number}: " in line for line in stub_lines)
        stubs += len(stub_lines)
        ast.parse(after.source)  # the student's cell is valid Python
    blocks = sum(cell.source.count(editions.BEGIN) for cell in instructor.cells)
    assert stubs == blocks


ROOT_LINE = "ROOT = next("


@pytest.mark.parametrize("where", ["notebooks", "build/student"])
def test_every_notebook_finds_the_project_root_the_same_way_from_either_edition(where, monkeypatch):
    lines = set()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        found = [line for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"
                 for line in cell.source.splitlines() if line.startswith("ROOT = ")]
        assert len(found) == 1, f"{path.name}: expected one `ROOT = ...` line in its set-up cell, found {found}"
        lines.add(found[0])
    assert len(lines) == 1, f"the notebooks find their root in different ways: {sorted(lines)}"
    (line,) = lines
    assert line.startswith(ROOT_LINE)
    folder = ROOT / where
    folder.mkdir(parents=True, exist_ok=True)  # build/student: where `make student` writes the student edition
    monkeypatch.chdir(folder)
    namespace = {}
    exec("from pathlib import Path\n" + line, namespace)
    assert namespace["ROOT"] == ROOT  # so each notebook writes to <root>/build/, not build/student/build/
