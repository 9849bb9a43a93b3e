"""Execute the workbook's notebooks headless and write each one, with its outputs, as .ipynb and .html.

    python tools/execute_notebooks.py --out build                  # all notebooks, profile "default"
    python tools/execute_notebooks.py --out build --profile ci 02  # one notebook, the small CI profile
    python tools/execute_notebooks.py --student --out build/student-run 01  # the student edition, errors allowed

The kernel ("python3", i.e. this Python) starts in notebooks/, as in JupyterLab, with SCN_PROFILE
set to the profile and the repository root on PYTHONPATH. The committed notebooks have no outputs; the executed copies go to --out.
"""
import argparse
import copy
import os
import re
import sys
import time
from pathlib import Path
from typing import List, Optional

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ORDER = ["01_hooks", "02_decorator_trace", "03_export_scn", "04_own_network"]  # the workbook, in teaching order


def make_client(nb: nbformat.NotebookNode, timeout: int = 600, allow_errors: bool = False) -> NotebookClient:
    """An nbclient client for `nb` whose kernel will start in notebooks/ (also for the student edition)."""
    return NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
                          resources={"metadata": {"path": str(NOTEBOOKS)}})


def kernel_env(profile: str) -> dict:
    """This process's environment plus SCN_PROFILE, and the repository on PYTHONPATH (for `import helpers`).
    OMP_WAIT_POLICY passes through when set (the tests set PASSIVE); otherwise notebook 03 picks it by load."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "SCN_PROFILE": profile, "PYTHONPATH": path}


def execute_notebook(path, out_dir, profile: str = "default", timeout: int = 600,
                     allow_errors: bool = False) -> nbformat.NotebookNode:
    """Run every cell of `path` in a fresh kernel; write <name>.ipynb and <name>.html to `out_dir`.

    A cell that raises stops the run with nbclient's CellExecutionError (the partial notebook is
    still written, so the HTML shows where it failed), unless `allow_errors` (the student edition,
    whose exercise cells raise NotImplementedError): then the run goes on to the last cell.
    """
    path, out_dir = Path(path), Path(out_dir)
    nb = nbformat.read(path, as_version=4)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        make_client(nb, timeout, allow_errors).execute(env=kernel_env(profile))
    finally:
        write_outputs(nb, out_dir / path.stem)
    return nb


def write_outputs(nb: nbformat.NotebookNode, stem: Path):
    """The executed notebook and its HTML export, side by side."""
    nbformat.write(nb, str(stem) + ".ipynb")
    try:
        from nbconvert import HTMLExporter
    except ImportError:  # a bare GPU machine may lack nbconvert: the .ipynb is still written
        print(f"note: nbconvert is not installed, so {stem}.html was not written")
        return
    body, _ = HTMLExporter(**offline_settings(stem.parent)).from_notebook_node(without_live_views(nb))
    Path(str(stem) + ".html").write_text(body, encoding="utf-8")


LIVE_VIEW = re.compile(r'<iframe[^>]*src="(?:http://127\.0\.0\.1:\d+/|[^"]*/proxy/\d+/)(?:[A-Za-z0-9_-]+/)?"'
                       r'[^>]*>\s*</iframe>')  # (the server's secret, helpers/viz/netron.py, ends the address)
LIVE_VIEW_NOTE = ('<div class="scn-live-view-note" style="border:1px dashed #999;padding:8px;color:#555">'
                  'Netron\'s live view was here: it needs the running kernel. Open the notebook in JupyterLab to '
                  'explore the graph; the static picture of the same graph is in this page.</div>')


def without_live_views(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of `nb` whose Netron iframes (a server of the kernel, gone once it stopped) say so instead."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            html = output.get("data", {}).get("text/html")
            if isinstance(html, str) and LIVE_VIEW.search(html):
                output["data"]["text/html"] = LIVE_VIEW.sub(LIVE_VIEW_NOTE, html)
    return nb


def offline_settings(folder: Path) -> dict:
    """HTMLExporter settings that take require.js, MathJax and the widget manager from folder/vendor/.

    The page then needs no network: the widgets' saved state is drawn by a local copy of the widget manager
    and the pictures are inside the page. Without npm and an empty cache (tools/web_assets.py), the CDN is used.
    """
    if str(ROOT / "tools") not in sys.path:
        sys.path.insert(0, str(ROOT / "tools"))
    import web_assets  # tools/web_assets.py
    try:
        web_assets.vendor(folder)
    except web_assets.WebAssetsError as error:
        print(f"note: the HTML in {folder} loads its scripts from the CDN: {error}")
        return {"embed_images": True}
    local = web_assets.urls()
    return {"embed_images": True, "extra_template_basedirs": [str(ROOT / "tools" / "templates")],
            "template_name": "lab_offline",
            **{k: local[k] for k in ("require_js_url", "mathjax_url", "widget_renderer_url")}}


def write_student_copy(path: Path, folder: Path) -> Path:
    """folder/<name>.ipynb: the student edition of the notebook at `path` (the one tools/editions.py writes)."""
    if str(ROOT / "tools") not in sys.path:
        sys.path.insert(0, str(ROOT / "tools"))
    import editions  # tools/editions.py
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(editions.student_notebook(nbformat.read(path, as_version=4), path.name), str(folder / path.name))
    return folder / path.name


def find_notebook(name: str) -> Path:
    """'02', '02_decorator_trace' or '02_decorator_trace.ipynb' -> notebooks/02_decorator_trace.ipynb."""
    stem = Path(name).stem
    for known in ORDER:
        if known == stem or known.startswith(stem + "_"):
            return NOTEBOOKS / f"{known}.ipynb"
    return NOTEBOOKS / f"{stem}.ipynb"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks to run, e.g. 01 or 02_decorator_trace (default: all)")
    parser.add_argument("--out", default="build", help="folder for the executed notebooks and HTML (default build)")
    parser.add_argument("--profile", default="default", help="SCN_PROFILE for the kernel, e.g. ci (default default)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds one cell may run (default 600)")
    parser.add_argument("--student", action="store_true",
                        help="run the student edition (solutions stubbed, tools/editions.py), errors allowed")
    args = parser.parse_args(argv)
    failed = 0
    for path in [find_notebook(n) for n in (args.names or ORDER)]:
        if not path.is_file():
            print(f"skip {path.relative_to(ROOT)}: the file does not exist yet")
            continue
        start = time.perf_counter()
        try:
            if args.student:
                path = write_student_copy(path, Path(args.out) / "student")
            execute_notebook(path, args.out, args.profile, args.timeout, allow_errors=args.student)
            status = "ok"
        except Exception as error:  # report and go on with the next notebook
            failed += 1
            status = f"FAILED: {type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error) else ''}"
        print(f"{path.name}: {status} in {time.perf_counter() - start:.1f} s -> {Path(args.out) / path.stem}.html")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
