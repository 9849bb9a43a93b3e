"""Slides of the workbook (reveal.js through nbconvert) that need no network: `make slides`.

    python tools/build_slides.py                 # build/slides/0N_*.slides.html for every notebook
    python tools/build_slides.py 03 --profile ci

Each notebook is made into slides from its executed copy in build/ (tools/execute_notebooks.py writes it),
so the slides show the outputs: pictures, tables, the step-through widget's state. A missing or stale copy
(older than the notebook) is executed first. The cells' slide metadata (View > Cell Toolbar > Slideshow
in Jupyter, or the property inspector of JupyterLab) decides what is a slide, a sub-slide, a fragment,
skipped, or speaker notes (press `s` in the slides).

reveal.js, require.js, jQuery, MathJax and the widget manager come from build/slides/vendor/ (copied by
tools/web_assets.py from pinned npm packages), so the folder build/slides/ is complete: copy it to a
laptop or a USB stick and open any .slides.html file in a browser, with no network.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

import nbformat

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
import execute_notebooks  # noqa: E402  (tools/ is not a package)
import web_assets  # noqa: E402

ROOT = TOOLS.parent
TEMPLATES = TOOLS / "templates"


def slides_exporter():
    """nbconvert's SlidesExporter with every script and style sheet taken from vendor/ beside the slides."""
    from nbconvert import SlidesExporter
    local = web_assets.urls()
    exporter = SlidesExporter(extra_template_basedirs=[str(TEMPLATES)], template_name="reveal_offline",
                              reveal_theme="white", reveal_scroll=True, reveal_number="c/t",
                              embed_images=True, **{k: local[k] for k in ("require_js_url", "jquery_url",
                                                                           "mathjax_url", "widget_renderer_url",
                                                                           "reveal_url_prefix")})
    return exporter


def check_offline(nb, path: Path) -> None:
    """Refuse what would need the network in the slides (mermaid is loaded from a CDN only)."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and "```mermaid" in cell.source:
            raise SystemExit(f"{path}: cell {index} has a mermaid diagram, which offline slides cannot draw; "
                             "draw it as a picture (SVG or PNG) instead")


def default_slides(nb) -> int:
    """A notebook without any slide metadata: each markdown cell that opens with a # or ## heading starts a
    slide, ### a sub-slide (in memory only; the notebook keeps no metadata). Returns the slides made."""
    if any("slideshow" in cell.metadata for cell in nb.cells):
        return 0
    made = 0
    for cell in nb.cells:
        first = cell.source.lstrip().split("\n", 1)[0] if cell.cell_type == "markdown" else ""
        kind = "slide" if first.startswith(("# ", "## ")) else "subslide" if first.startswith("### ") else None
        if kind:
            cell.metadata["slideshow"] = {"slide_type": kind}
            made += 1
    return made


def executed_copy(path: Path, build: Path, profile: str) -> Path:
    """build/<name>.ipynb, executed now when missing or older than the notebook."""
    copy = build / path.name
    if not copy.is_file() or copy.stat().st_mtime < path.stat().st_mtime:
        print(f"{path.name}: executing first (profile {profile}) ...", flush=True)
        execute_notebooks.execute_notebook(path, build, profile)
    return copy


def build_slides(path: Path, build: Path, out: Path, profile: str) -> Path:
    nb = execute_notebooks.without_live_views(nbformat.read(executed_copy(path, build, profile), as_version=4))
    check_offline(nb, path)
    if default_slides(nb):
        print(f"note: {path.name} has no slide metadata: its headings start the slides")
    body, _ = slides_exporter().from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
    target = out / f"{path.stem}.slides.html"
    target.write_text(body, encoding="utf-8")
    return target


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks, e.g. 01 or 03_export_scn (default: all)")
    parser.add_argument("--build", default="build", help="folder of the executed notebooks (default build)")
    parser.add_argument("--out", default=None, help="folder for the slides (default BUILD/slides)")
    parser.add_argument("--profile", default="default", help="SCN_PROFILE when a notebook must be executed first")
    args = parser.parse_args(argv)
    build = Path(args.build)
    out = Path(args.out) if args.out else build / "slides"
    out.mkdir(parents=True, exist_ok=True)
    try:
        web_assets.vendor(out, quiet=False)
    except web_assets.WebAssetsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in [execute_notebooks.find_notebook(n) for n in (args.names or execute_notebooks.ORDER)]:
        if not path.is_file():
            print(f"skip {path.name}: the file does not exist")
            continue
        start = time.perf_counter()
        target = build_slides(path, build, out, args.profile)
        print(f"{target} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
