"""Try answers to a notebook's exercises in a live kernel, as a student would.

    with StudentKernel("01_hooks") as kernel:       # runs the whole student edition (stubs) in one kernel
        text = kernel.try_answer(2, WRONG_SOURCE)   # runs WRONG_SOURCE as the exercise cell, then the check cell
        assert "NOT YET" in text and "delattr" in text
        text = kernel.try_answer(2, kernel.solution(2))  # the instructor's cell: now solved, same kernel
        assert kernel.results()["exercises"] == {"solved": 1, "total": 3}

Exercise cells are the instructor's code cells with a `### BEGIN SOLUTION` marker and a `# Exercise N`
comment; the check cell of exercise N is the code cell that calls `exercises.check(N)`.
"""
import importlib.util
import json
import re
from typing import List, Optional

import nbformat

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("execute_notebooks", ROOT / "tools" / "execute_notebooks.py")
runner = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runner)
spec = importlib.util.spec_from_file_location("editions", ROOT / "tools" / "editions.py")
editions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(editions)

CHECK_CALL = r"^\s*exercises\.check\(\s*{}\s*\)"


def output_text(cell) -> str:
    """A cell's stdout / stderr text and its error, if any, as one string."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}")
    return "".join(parts)


def results_line(cell) -> dict:
    lines = [line for line in output_text(cell).splitlines() if line.startswith("RESULTS ")]
    assert len(lines) == 1, f"the last code cell should print one RESULTS line, printed: {output_text(cell)[-2000:]}"
    return json.loads(lines[0][len("RESULTS "):])


class StudentKernel:
    """A kernel that has run the student edition of notebook `stem`; `try_answer` works in that kernel."""

    def __init__(self, stem: str, profile: str = "ci", timeout: int = 600):
        self.stem = stem
        self.instructor = nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4)
        self.nb = editions.student_notebook(self.instructor, f"{stem}.ipynb")
        self.cells = list(self.nb.cells)  # the notebook's own cells; `run` appends more to self.nb
        self.client = runner.make_client(self.nb, timeout, allow_errors=True)
        self.profile = profile
        self._kernel = None

    def __enter__(self) -> "StudentKernel":
        self._kernel = self.client.setup_kernel(env=runner.kernel_env(self.profile))
        self._kernel.__enter__()
        for index, cell in enumerate(self.cells):
            if cell.cell_type == "code":
                self.client.execute_cell(cell, index)
        return self

    def __exit__(self, *exc):
        return self._kernel.__exit__(*exc)

    # --- the notebook's cells -------------------------------------------------------------------
    def code_cells(self, nb=None) -> List[nbformat.NotebookNode]:
        return [c for c in (nb.cells if nb is not None else self.cells) if c.cell_type == "code"]

    def exercise_numbers(self) -> List[int]:
        return sorted({editions.exercise_number(c.source, self.stem) for c in self.code_cells(self.instructor)
                       if editions.BEGIN in c.source})

    def solution(self, number: int) -> str:
        """The instructor's exercise cell of `number`, markers and all (they are comments)."""
        cells = [c.source for c in self.code_cells(self.instructor)
                 if editions.BEGIN in c.source and editions.exercise_number(c.source, self.stem) == number]
        assert len(cells) == 1, f"{self.stem}: expected one cell for exercise {number}, found {len(cells)}"
        return cells[0]

    def check_cell(self, number: int) -> nbformat.NotebookNode:
        pattern = re.compile(CHECK_CALL.format(number), re.M)
        cells = [c for c in self.code_cells() if pattern.search(c.source)]
        assert len(cells) == 1, f"{self.stem}: expected one check cell `exercises.check({number})`, found {len(cells)}"
        return cells[0]

    def last_cell(self) -> nbformat.NotebookNode:
        return self.code_cells()[-1]

    # --- running things in the kernel -----------------------------------------------------------
    def run(self, source: str) -> str:
        """Run `source` as a new cell at the end of the notebook; its printed text (and error)."""
        cell = nbformat.v4.new_code_cell(source)
        self.nb.cells.append(cell)
        self.client.execute_cell(cell, len(self.nb.cells) - 1)
        return output_text(cell)

    def try_answer(self, number: int, source: str) -> str:
        """Run `source` as exercise `number`'s cell, then its check cell; the check cell's text."""
        self.run(source)
        return self.run(self.check_cell(number).source)

    def results(self) -> dict:
        """Run the notebook's last cell again; the RESULTS it prints."""
        cell = nbformat.v4.new_code_cell(self.last_cell().source)
        self.nb.cells.append(cell)
        self.client.execute_cell(cell, len(self.nb.cells) - 1)
        return results_line(cell)

    def verdict_of_first_run(self, number: int) -> Optional[str]:
        """What the check cell printed when the student edition ran top to bottom."""
        return output_text(self.check_cell(number))
