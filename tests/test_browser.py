"""The notebooks in a real JupyterLab, driven through Debian's Chromium with Playwright.

For each notebook: open it, run every cell from the Run menu, and check in the page that no cell shows an
exception and every code cell ran; in notebooks 02 and 03 the Netron view must draw the exported graph (03:
40 operator nodes), and in 03 a click on the step-through widget's "Next" must show the next node.
Screenshots go to build/screenshots/ (01_hooks.png, 02_decorator_trace.png, 02_netron.png,
03_export_scn.png, 03_netron.png, 03_stepper.png).

JupyterLab serves a temporary COPY of notebooks/ (TMP/notebooks, with TMP/build beside it, which is where the
notebooks put what they write: they take the folder above notebooks/ as the repository), so nothing is ever
saved into the committed notebooks. The server, and so every kernel, runs with SCN_PROFILE=ci and the
repository on PYTHONPATH (as tools/execute_notebooks.py does). Every process it starts is stopped afterwards,
and the test fails if a kernel or a netron server had to be killed.

JupyterLab runs as a class server does: under a path prefix (base_url /user/student/, as JupyterHub's single-user
servers) with jupyter-server-proxy. The kernels learn the prefix from the server (helpers.viz.netron), with no
setting, so the Netron iframe must load from /user/student/proxy/<port>/<secret>/ (through the Jupyter server), never
from http://127.0.0.1:<port>/, which a student's browser on another machine could not reach.

A notebook that stops its netron server in a clean-up cell (`name.stop()`, `name` from `show_netron`) is run
in two steps from the Run menu: "Run All Above Selected Cell" with that cell selected, the checks of the live
Netron view and widget, then "Run Selected Cell and All Below". Run at once, the server would be stopped a
fraction of a second after its iframe appears, before netron's page has loaded.

Without /usr/bin/chromium the test skips (run `make system-deps`), except in CI (CI=true) where it fails.
"""
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import nbformat
import onnx
import pytest

from tests.browser_support import (CELL, CHROMIUM, CHROMIUM_ARGS, DIALOG, HOST, KERNEL_INDICATOR, MENU_BAR, MENU_COMMAND,
                                   NODE_SELECTOR, STDOUT_OUTPUT, JupyterLab, exception_name, exceptions_in_cells,
                                   model_errors, plain_text, prompts, require_chromium, wait_for_netron_graph)
from tests.conftest import ROOT


SCREENSHOTS = ROOT / "build" / "screenshots"
BASE_URL = "/user/student/"  # the server's path prefix, as on JupyterHub
VIEWPORT = {"width": 1500, "height": 1000}


@dataclass
class Expected:
    timeout: float  # seconds for all of the notebook's cells
    model: Optional[str] = None  # the ONNX file (relative to TMP) that the notebook's Netron view shows
    netron_nodes: Optional[int] = None  # operator nodes netron must draw; None: as many as the file has
    stepper: bool = False  # a viz.node_stepper widget to click through


NOTEBOOKS = {
    "01_hooks": Expected(timeout=180),
    "02_decorator_trace": Expected(timeout=300, model="build/02_toy.onnx"),
    "03_export_scn": Expected(timeout=600, model="build/notebook03/scn.onnx", netron_nodes=40, stepper=True),
}


@pytest.fixture(scope="module")
def workbook_copy():
    """TMP/notebooks (a copy) and TMP/build; TMP/jupyter holds the server's private state. Removed afterwards."""
    require_chromium()
    folder = Path(tempfile.mkdtemp(prefix="scn-browser-"))
    try:
        (folder / "notebooks").mkdir()
        for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):  # the notebooks only, no stray files
            shutil.copy(notebook, folder / "notebooks" / notebook.name)
        (folder / "build").mkdir()
        # 01 and 02 take the first folder above them that holds helpers/ as the repository (03 the folder above
        # notebooks/): with this link that is TMP for all three, so what they write goes to TMP/build
        (folder / "helpers").symlink_to(ROOT / "helpers", target_is_directory=True)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(workbook_copy):
    """JupyterLab on the copy; stopped (kernels, netron servers and all) even when a test fails."""
    pythonpath = ":".join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    server = JupyterLab(workbook_copy / "notebooks", workbook_copy / "jupyter",
                        env={"SCN_PROFILE": "ci", "PYTHONPATH": pythonpath}, base_url=BASE_URL)
    try:
        server.start()
        try:  # jupyter-server-proxy's own API answers: the extension is loaded
            server.api("GET", "server-proxy/servers-info")
        except OSError as error:
            pytest.fail(f"jupyter-server-proxy is not active in JupyterLab ({error}); pip install -r requirements.lock; "
                        f"server log:\n{server.log_tail()}")
        yield server
    finally:
        server.stop()
    assert server.leftovers == [], f"processes of the browser test that did not end by themselves: {server.leftovers}"


@pytest.fixture(scope="module")
def browser_context():
    """Chromium (headless) with netron's consent cookie for 127.0.0.1 (cookies ignore ports)."""
    require_chromium()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            context.add_cookies([{"name": "consent", "value": "1", "domain": HOST, "path": "/"}])
            context.set_default_timeout(60_000)
            yield context
            context.close()
        finally:
            browser.close()


def netron_stop_cell(nb) -> Optional[int]:
    """The index of the cell that stops the notebook's netron server (`x.stop()` on a line of its own)."""
    names = {m.group(1) for cell in nb.cells if cell.cell_type == "code"
             for m in re.finditer(r"^(\w+)\s*=\s*show_netron\(", cell.source, re.M)}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and any(re.search(rf"^{n}\.stop\(\)", cell.source, re.M) for n in names):
            return index
    return None


def cell_summary(nb, index: int) -> str:
    source = nb.cells[index].source.strip().splitlines()
    return f"cell {index} ({source[0][:80] if source else 'empty'!r}...)"


class NotebookPage:
    """One notebook open in its own JupyterLab tab (page), with the waits and checks of this test."""

    def __init__(self, page, nb, stem: str):
        self.page, self.nb, self.stem = page, nb, stem
        self.cells = page.locator(CELL)

    def open(self, lab: JupyterLab):
        """Open the notebook; wait for all its cells and for its kernel, idle in the page AND on the server.

        The page's indicator alone is not enough: it reads "idle" for a moment before the kernel has
        connected ("connecting", "unknown", then "idle"), and a Run All clicked then is lost.
        """
        self.page.goto(lab.lab_url(f"{self.stem}.ipynb", workspace=f"browser-test-{self.stem}"))
        deadline, calm = time.monotonic() + 120, 0
        while calm < 4:
            self.fail_on_dialog()
            on_server = [s["kernel"].get("execution_state") for s in lab.api("GET", "api/sessions")
                         if s.get("path") == f"{self.stem}.ipynb"]
            ready = self.cells.count() == len(self.nb.cells) and self.kernel_status() == "idle" and on_server == ["idle"]
            calm = calm + 1 if ready else 0
            assert time.monotonic() < deadline, (
                f"{self.stem}: the notebook did not open with an idle kernel within 120 s ({self.cells.count()} of "
                f"{len(self.nb.cells)} cells, kernel {self.kernel_status()!r} in the page, {on_server} on the "
                f"server); server log:\n{lab.log_tail()}")
            time.sleep(0.25)

    def kernel_status(self) -> Optional[str]:
        indicator = self.page.locator(KERNEL_INDICATOR)
        return indicator.first.get_attribute("data-status") if indicator.count() else None

    def fail_on_dialog(self):
        dialog = self.page.locator(DIALOG)
        if dialog.count():
            self.screenshot(f"{self.stem}_dialog.png")
            pytest.fail(f"{self.stem}: JupyterLab shows a dialog: {dialog.first.inner_text()!r}")

    def run_menu(self, command: str):
        """Run > the item whose command id is `command` (e.g. runmenu:run-all); wait until a prompt changes."""
        before = prompts(self.cells)
        self.page.locator(MENU_BAR).get_by_role("menuitem", name="Run", exact=True).click()
        self.page.locator(MENU_COMMAND.format(command)).click()
        deadline = time.monotonic() + 30
        while prompts(self.cells) == before:
            assert time.monotonic() < deadline, f"{self.stem}: Run > {command} started no cell within 30 s"
            time.sleep(0.1)

    def select_cell(self, index: int):
        cell = self.cells.nth(index)
        cell.locator(".jp-InputPrompt").click()
        assert "jp-mod-active" in (cell.get_attribute("class") or "").split(), f"could not select cell {index}"

    def wait_until_done(self, timeout: float, last: int):
        """Until no cell waits or runs ([*]) and the kernel is idle, three polls in a row; cells < last must have run."""
        deadline, calm = time.monotonic() + timeout, 0
        while calm < 3:
            time.sleep(0.5)
            self.fail_on_dialog()
            status, marks = self.kernel_status(), prompts(self.cells)
            assert status not in ("dead", "restarting", "autorestarting"), \
                f"{self.stem}: the kernel is {status} while running the cells (last prompts {marks[-5:]})"
            running = [i for i, mark in enumerate(marks) if mark and "*" in mark]
            calm = calm + 1 if not running and status == "idle" else 0
            if time.monotonic() > deadline:
                self.screenshot(f"{self.stem}_timeout.png")
                where = cell_summary(self.nb, running[0]) if running else f"kernel {status!r}"
                pytest.fail(f"{self.stem}: cells still running after {timeout:.0f} s, at {where}")
        self.check_no_exception()
        marks = prompts(self.cells)
        not_run = [i for i, mark in enumerate(marks[:last]) if mark is not None and not re.fullmatch(r"\[\d+\]:", mark)]
        assert not not_run, f"{self.stem}: code cells that did not run: {[cell_summary(self.nb, i) for i in not_run]}"

    def check_no_exception(self):
        shown = exceptions_in_cells(self.cells)
        in_model = model_errors(self.page)
        if shown or in_model:
            self.screenshot(f"{self.stem}.png", cell=(shown or in_model)[0]["cell"])
        assert not shown, f"{self.stem}: exceptions in the page:\n" + "\n\n".join(
            f"{cell_summary(self.nb, e['cell'])}: {e['exception']}\n{e['text']}" for e in shown)
        assert not in_model, f"{self.stem}: error outputs in the notebook model: {in_model}"

    def results(self) -> dict:
        """The notebook's `RESULTS {json}` line (printed by its last code cell), read off the page."""
        texts = self.page.locator(STDOUT_OUTPUT).all_inner_texts()
        lines = [line for text in texts for line in text.splitlines() if line.startswith("RESULTS ")]
        assert len(lines) == 1, f"{self.stem}: expected one RESULTS line in the page, got {lines}"
        return json.loads(lines[0][len("RESULTS "):])

    def screenshot(self, name: str, cell: Optional[int] = None):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        target = self.cells.nth(cell) if cell is not None else self.cells.last
        try:
            target.scroll_into_view_if_needed(timeout=5000)
        except Exception:  # a screenshot must not hide the real failure
            pass
        self.page.screenshot(path=str(SCREENSHOTS / name))


def check_netron(notebook: NotebookPage, copy_root: Path, expected: Expected):
    """The notebook's Netron iframe, through the Jupyter server's proxy, draws the exported graph: one node per
    operator of the ONNX file."""
    frames = notebook.page.locator(".jp-OutputArea-output iframe")
    assert frames.count() == 1, f"{notebook.stem}: expected one Netron iframe in the outputs, found {frames.count()}"
    iframe = frames.first
    src = iframe.get_attribute("src") or ""
    assert re.fullmatch(rf"{re.escape(BASE_URL)}proxy/\d+/[A-Za-z0-9_-]{{32}}/", src), \
        f"{notebook.stem}: the Netron iframe loads {src!r}, not through the proxy at {BASE_URL}proxy/<port>/<secret>/"
    iframe.scroll_into_view_if_needed()
    model_nodes = len(onnx.load(str(copy_root / expected.model)).graph.node)
    nodes = wait_for_netron_graph(iframe.content_frame, timeout=120)
    netron_png = f"{notebook.stem[:2]}_netron.png"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    iframe.screenshot(path=str(SCREENSHOTS / netron_png))
    page_url = iframe.element_handle().content_frame().url
    print(f"\n{notebook.stem}: Netron iframe src={src} page={page_url} drew {nodes} nodes")
    assert nodes == model_nodes, f"{notebook.stem}: netron drew {nodes} nodes ({NODE_SELECTOR}), {expected.model} has {model_nodes}"
    if expected.netron_nodes is not None:
        assert nodes == expected.netron_nodes, f"{notebook.stem}: netron drew {nodes} nodes, expected {expected.netron_nodes}"


def check_stepper(notebook: NotebookPage, copy_root: Path, expected: Expected):
    """viz.node_stepper: a click on Next (in the page) makes the kernel show the next node of the graph."""
    from playwright.sync_api import expect
    names = [n.name for n in onnx.load(str(copy_root / expected.model)).graph.node]
    page = notebook.page
    view = page.locator(".scn-node-view")
    assert view.count() == 1, f"{notebook.stem}: expected one step-through widget (.scn-node-view), found {view.count()}"
    stepper = page.locator(".widget-vbox").filter(has=page.locator(".scn-node-view")).last
    stepper.scroll_into_view_if_needed()
    expect(view.locator("b").first).to_have_text(names[0])
    assert f"(node 1 of {len(names)})" in view.inner_text(), view.inner_text()
    stepper.get_by_role("button", name="Next", exact=True).click()
    expect(view.locator("b").first).to_have_text(names[1], timeout=30_000)  # the kernel answered the click
    assert f"(node 2 of {len(names)})" in view.inner_text(), view.inner_text()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    stepper.evaluate("element => element.scrollIntoView({block: 'start'})")  # the widget at the top of the notebook
    time.sleep(0.3)
    page.screenshot(path=str(SCREENSHOTS / f"{notebook.stem[:2]}_stepper.png"))


# The <pre> of stderr outputs as JupyterLab 4.6 rendered them (IPython 9): exceptions, then other stderr text.
RENDERED_EXCEPTIONS = {
    "ZeroDivisionError": '<span class="ansi-red-fg">---------------------------------------------------------------------------'
                         '</span>\n<span class="ansi-red-fg">ZeroDivisionError</span>                         Traceback '
                         '(most recent call last)\n<span class="ansi-cyan-fg">Cell</span><span class="ansi-cyan-fg"> '
                         '</span><span class="ansi-green-fg">In[2]</span><span class="ansi-green-fg">, line 1</span>\n'
                         '<span class="ansi-green-fg">----&gt; </span><span class="ansi-green-fg">1</span> <span '
                         'class="ansi-green-fg">1</span><a>/<span class="ansi-green-fg">0</span></a>\n\n<span '
                         'class="ansi-red-fg">ZeroDivisionError</span>: division by zero',
    "SyntaxError": '  <span class="ansi-cyan-fg">Cell</span><span class="ansi-cyan-fg"> </span><span class="ansi-green-fg">'
                   'In[2]</span><span class="ansi-green-fg">, line 1</span>\n<span class="ansi-red-fg">    </span><span '
                   'class="ansi-red-fg">1 +</span>\n       ^\n<span class="ansi-red-fg">SyntaxError</span><span '
                   'class="ansi-red-fg">:</span> invalid syntax\n',
    "AssertionError": '<span class="ansi-red-fg">AssertionError</span>                            Traceback (most recent '
                      'call last)\n<span class="ansi-green-fg">----&gt; </span><span class="ansi-green-fg">1</span> <span '
                      'class="ansi-bold" style="color:rgb(0,135,0)">assert</span> <span class="ansi-green-fg">1</span> == '
                      '<span class="ansi-green-fg">2</span>\n\n<span class="ansi-red-fg">AssertionError</span>: ',
    "SystemExit": 'An exception has occurred, use %tb to see the full traceback.\n\n<span class="ansi-red-fg">SystemExit'
                  '</span><span class="ansi-red-fg">:</span> 3\n',
    "WorkbookError": '<span class="ansi-red-fg">ZeroDivisionError</span>: division by zero\n\nThe above exception was the '
                     'direct cause of the following exception:\n\n<span class="ansi-red-fg">WorkbookError</span>      '
                     'Traceback (most recent call last)\n\n<span class="ansi-red-fg">WorkbookError</span>: wrapped',
}
RENDERED_STDERR = [
    '<a>/tmp/ipykernel_22690/890934377.py:2</a>: UserWarning: just a warning\n  warnings.warn(\'just a warning\')\nto stderr\n',
    'Traceback (most recent call last):\n  File "<a>/tmp/ipykernel_22690/548984351.py", line 2</a>, in &lt;module&gt;\n'
    '    1<a>/0</a>\n    ~^~\nZeroDivisionError: division by zero\n',  # traceback.print_exc(): the cell went on
    'ERROR:x:boom\nZeroDivisionError: z\n',  # logging.exception
]


def test_the_exception_signature_matches_what_jupyterlab_renders():
    for name, rendered in RENDERED_EXCEPTIONS.items():
        assert exception_name(rendered) == name
    assert plain_text(RENDERED_EXCEPTIONS["SyntaxError"]).strip().endswith("SyntaxError: invalid syntax")
    for rendered in RENDERED_STDERR:
        assert exception_name(rendered) is None, rendered


@pytest.mark.browser  # slow (about a minute and a half): `pytest -m "not browser"` leaves it out
@pytest.mark.parametrize("stem", list(NOTEBOOKS))
def test_notebook_runs_in_jupyterlab(stem, lab, browser_context, workbook_copy):
    expected = NOTEBOOKS[stem]
    path = workbook_copy / "notebooks" / f"{stem}.ipynb"
    if not path.is_file():
        pytest.skip(f"notebooks/{stem}.ipynb does not exist yet")
    nb = nbformat.read(path, as_version=4)
    page = browser_context.new_page()
    console_errors = []
    page.on("pageerror", lambda error: console_errors.append(str(error)))
    notebook = NotebookPage(page, nb, stem)
    try:
        notebook.open(lab)
        stop_cell = netron_stop_cell(nb) if expected.model else None
        if expected.model:
            assert stop_cell is not None, f"{stem}: no cell stops the netron server (`x.stop()` after `x = show_netron(...)`)"
            notebook.select_cell(stop_cell)
            notebook.run_menu("notebook:run-all-above")
            notebook.wait_until_done(expected.timeout, last=stop_cell)
            check_netron(notebook, workbook_copy, expected)
            if expected.stepper:
                check_stepper(notebook, workbook_copy, expected)
            notebook.select_cell(stop_cell)
            notebook.run_menu("notebook:run-all-below")
        else:
            notebook.run_menu("runmenu:run-all")
        notebook.wait_until_done(expected.timeout, last=len(nb.cells))
        notebook.screenshot(f"{stem}.png")
        results = notebook.results()
        if stem == "03_export_scn":
            assert results["profile"] == "ci" and results["nodes"] == 40, results  # SCN_PROFILE reached the kernel
        assert not console_errors, f"{stem}: JavaScript errors in the page: {console_errors[:3]}"
    finally:
        page.close()
        try:
            outlived = lab.shutdown_session(f"{stem}.ipynb")  # its kernel, and the netron servers it started
        except Exception as error:  # the server is stopped by the fixture anyway
            outlived = [f"could not shut the kernel down: {error!r}"]
    assert outlived == [], f"{stem}: processes that outlived the kernel's shutdown (killed now): {outlived}"
