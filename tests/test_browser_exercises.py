"""An exercise check in a real JupyterLab: it fails with feedback in the student edition, passes in the instructor's.

JupyterLab serves a temporary folder with student/01_hooks.ipynb (the student edition, tools/editions.py) and
instructor/01_hooks.ipynb (a copy of notebooks/01_hooks.ipynb). In the student edition every cell is run,
exercise 2's cell is given a typical wrong answer (a restore by assignment) and run with its check cell:
the check prints what is wrong and the hint. The instructor edition, run the same way, prints "solved".
Screenshots: build/screenshots/exercise_fail.png and exercise_pass.png.

Without /usr/bin/chromium the test skips (run `make system-deps`), except in CI (CI=true) where it fails.
"""
import os
import re
import shutil
import time

import nbformat
import pytest

from tests.browser_support import (CELL, CHROMIUM, CHROMIUM_ARGS, STDOUT_OUTPUT, JupyterLab, exceptions_in_cells,
                                   require_chromium)
from tests.conftest import ROOT
from tests.exercise_support import CHECK_CALL, editions
from tests.test_exercises import WRONG_01

SCREENSHOTS = ROOT / "build" / "screenshots"
STEM = "01_hooks"
EXERCISE = 2
WRONG_ANSWER = "# Exercise 2: patch a method and restore it exactly" + WRONG_01[EXERCISE][0][0]  # restored by assignment


def cell_index(nb, pattern: str) -> int:
    found = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and re.search(pattern, cell.source, re.M)]
    assert len(found) == 1, f"expected one cell matching {pattern!r}, found {found}"
    return found[0]


class Lab:
    """One notebook open in JupyterLab, driven through the app's command registry (expose_app_in_browser)."""

    def __init__(self, page, lab: JupyterLab, path: str, nb):
        self.page, self.lab, self.path, self.nb = page, lab, path, nb
        self.cells = page.locator(CELL)

    def open(self, timeout: float = 120):
        self.page.goto(self.lab.lab_url(self.path, workspace=f"exercises-{self.path.split('/')[0]}"))
        deadline = time.monotonic() + timeout
        while True:
            sessions = [s["kernel"].get("execution_state") for s in self.lab.api("GET", "api/sessions")
                        if s.get("path") == self.path]
            status = self.page.evaluate(
                "() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel?.status ?? null")
            if self.cells.count() == len(self.nb.cells) and sessions == ["idle"] and status == "idle":
                return
            if time.monotonic() > deadline:
                self.screenshot(None, f"exercise_open_failed.png")
            assert time.monotonic() < deadline, (
                f"{self.path} did not open with an idle kernel in {timeout:.0f} s: {self.cells.count()} of "
                f"{len(self.nb.cells)} cells, kernel {status!r} in the page, {sessions} on the server")
            time.sleep(0.25)

    def run_all(self, timeout: float = 180):
        self.page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        self.wait_for_text(len(self.nb.cells) - 1, "RESULTS ", timeout)

    def run_cell(self, index: int, source: str = None):
        """Run cell `index` (after replacing its source, when given), as Shift+Enter would."""
        self.page.evaluate("""([index, source]) => {
            const notebook = window.jupyterapp.shell.currentWidget.content;
            if (source !== null) notebook.widgets[index].model.sharedModel.setSource(source);
            notebook.activeCellIndex = index;
            return window.jupyterapp.commands.execute('notebook:run-cell');
        }""", [index, source])

    def text_of(self, index: int) -> str:
        return "\n".join(self.cells.nth(index).locator(STDOUT_OUTPUT).all_inner_texts())

    def wait_for_text(self, index: int, words: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while words not in self.text_of(index):
            assert time.monotonic() < deadline, f"{self.path}: cell {index} did not print {words!r}: {self.text_of(index)!r}"
            time.sleep(0.25)
        return self.text_of(index)

    def screenshot(self, top: int, name: str):
        """The page with cell `top` (None: as it is) at the top of the notebook's view."""
        if top is not None:
            self.cells.nth(top).evaluate("element => element.scrollIntoView({block: 'start'})")
        time.sleep(0.5)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / name))


@pytest.mark.browser  # starts JupyterLab and Chromium: `pytest -m "not browser"` leaves it out
def test_a_check_fails_with_feedback_in_the_student_edition_and_passes_in_the_instructor_edition(tmp_path):
    require_chromium()
    from playwright.sync_api import sync_playwright
    instructor = nbformat.read(ROOT / "notebooks" / f"{STEM}.ipynb", as_version=4)
    student = editions.student_notebook(instructor, f"{STEM}.ipynb")
    served = tmp_path / "workbook"
    (served / "student").mkdir(parents=True)
    (served / "instructor").mkdir()
    nbformat.write(student, str(served / "student" / f"{STEM}.ipynb"))
    shutil.copy(ROOT / "notebooks" / f"{STEM}.ipynb", served / "instructor" / f"{STEM}.ipynb")
    exercise = cell_index(instructor, rf"^# Exercise {EXERCISE}\b")
    check = cell_index(instructor, CHECK_CALL.format(EXERCISE))

    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    lab = JupyterLab(served, tmp_path / "jupyter", env={"SCN_PROFILE": "ci", "PYTHONPATH": pythonpath})
    lab.start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(60_000)

                notebook = Lab(page, lab, f"student/{STEM}.ipynb", student)
                notebook.open()
                notebook.run_all()
                assert "NotImplementedError" in notebook.text_of(check)  # the stub, before any answer
                notebook.run_cell(exercise, WRONG_ANSWER)
                notebook.run_cell(check)
                text = notebook.wait_for_text(check, "NOT YET")
                assert "still holds" in text and "delattr" in text and "the check put back" in text, text
                assert "RESULTS" in notebook.text_of(len(student.cells) - 1)
                assert exceptions_in_cells(notebook.cells) == []  # the check printed; it raised nothing
                notebook.screenshot(exercise - 1, "exercise_fail.png")
                lab.shutdown_session(notebook.path)

                notebook = Lab(page, lab, f"instructor/{STEM}.ipynb", instructor)
                notebook.open()
                notebook.run_all()
                text = notebook.wait_for_text(check, "solved.")
                assert "NOT YET" not in text and '"solved": 3' in notebook.text_of(len(instructor.cells) - 1)
                notebook.screenshot(exercise - 1, "exercise_pass.png")
                lab.shutdown_session(notebook.path)
            finally:
                browser.close()
    finally:
        lab.stop()
    assert lab.leftovers == [], f"processes that did not end by themselves: {lab.leftovers}"
