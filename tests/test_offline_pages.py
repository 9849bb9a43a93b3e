"""The slides and the executed HTML open in Chromium with every non-local request blocked.

Notebooks 01 and 03 are executed (profile ci) into a temporary build folder, written as HTML
(tools/execute_notebooks.py) and as reveal.js slides (tools/build_slides.py), each folder with its vendor/
copy of the pinned npm packages (tools/web_assets.py). The pages are opened as files, the way a trainer
double-clicks them, in a browser whose every request to another host is aborted and recorded: none may
be made. Checks: the first slides render (reveal.js ready, a title, the next slide), the HTML shows the
step-through widget's saved state (drawn by the local widget manager) and every picture.
Screenshots: build/screenshots/slides_offline.png, slides_offline_03.png, html_offline.png.
"""
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest

from tests.browser_support import CHROMIUM, CHROMIUM_ARGS, require_chromium
from tests.conftest import ROOT

SCREENSHOTS = ROOT / "build" / "screenshots"
LOCAL_SCHEMES = {"file", "data", "blob", "about"}
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def load_tool(name: str):
    sys.path.insert(0, str(ROOT / "tools"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def is_local(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in LOCAL_SCHEMES or (parsed.hostname or "") in LOCAL_HOSTS


def test_only_local_addresses_count_as_local():
    assert is_local("file:///tmp/x.html") and is_local("data:image/png;base64,AA") and is_local("http://127.0.0.1:8/")
    assert not is_local("https://unpkg.com/reveal.js@4.0.2/dist/reveal.js")
    assert not is_local("https://cdnjs.cloudflare.com/ajax/libs/require.js/2.1.10/require.min.js")


def test_the_pages_point_at_the_vendor_folder_only():
    """What nbconvert is told: every script URL of both exporters is a relative path into vendor/."""
    slides = load_tool("build_slides").slides_exporter()
    html = load_tool("execute_notebooks")
    for name in ("require_js_url", "jquery_url", "mathjax_url", "widget_renderer_url", "reveal_url_prefix"):
        assert getattr(slides, name).startswith("vendor/"), (name, getattr(slides, name))
    settings = html.offline_settings(Path(tempfile.mkdtemp(prefix="scn-vendor-")))
    assert all(v.startswith("vendor/") for k, v in settings.items() if k.endswith("_url")), settings


def test_a_notebook_without_slide_metadata_gets_a_slide_per_heading():
    slides = load_tool("build_slides")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Title\ntext"),
                                         nbformat.v4.new_code_cell("1"),
                                         nbformat.v4.new_markdown_cell("## 1. A section"),
                                         nbformat.v4.new_markdown_cell("### A sub-section"),
                                         nbformat.v4.new_markdown_cell("plain text")])
    assert slides.default_slides(nb) == 3
    assert [c.metadata.get("slideshow", {}).get("slide_type") for c in nb.cells] == \
        ["slide", None, "slide", "subslide", None]
    assert slides.default_slides(nb) == 0  # metadata present: left as the notebook's owner set it
    nb.cells.append(nbformat.v4.new_markdown_cell("```mermaid\ngraph TD; A-->B\n```"))
    with pytest.raises(SystemExit, match="mermaid"):
        slides.check_offline(nb, Path("x.ipynb"))


def test_the_pages_say_where_netrons_live_view_was():
    """A Netron iframe points at a server of the kernel, gone in a saved page: the pages say so instead."""
    runner = load_tool("execute_notebooks")
    frames = ['<iframe width="100%" height="650" src="http://127.0.0.1:34219/" frameborder="0"></iframe>',
              '\n<iframe\n  width="100%"\n  src="/user/student/proxy/40911/"\n></iframe>\n',
              '<iframe src="http://127.0.0.1:34219/Xq3_-kR2bVw9JtLmN0pAa7sD4fGh5JkL/"></iframe>',
              '<iframe src="/user/student/proxy/40911/Xq3_-kR2bVw9JtLmN0pAa7sD4fGh5JkL/"></iframe>']
    other = '<iframe src="https://example.org/video"></iframe>'
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("display_data", data={"text/html": html, "text/plain": "IFrame"})
        for html in frames + [other]])])
    pages = runner.without_live_views(nb)
    shown = [o["data"]["text/html"] for o in pages.cells[0].outputs]
    assert all("scn-live-view-note" in h and "<iframe" not in h for h in shown[:4]), shown
    assert shown[4] == other and nb.cells[0].outputs[0]["data"]["text/html"] == frames[0]  # a copy was changed


def test_a_tarball_with_the_wrong_checksum_is_deleted_and_refused(tmp_path):
    web = load_tool("web_assets")
    package = web.PACKAGES[1]  # requirejs: any pinned package
    (tmp_path / package.tarball).write_bytes(b"not the pinned tarball")
    with pytest.raises(web.WebAssetsError, match="is not the pinned"):
        web.fetch([package], cache=tmp_path, quiet=True)
    assert not (tmp_path / package.tarball).exists()


@pytest.fixture(scope="module")
def built():
    """TMP with 01 and 03 executed (HTML) and made into slides; removed afterwards.

    SCN_OFFLINE_PAGES=DIR uses DIR instead (as `make notebooks slides` leave build/), to re-run the checks fast.
    """
    require_chromium()
    if os.environ.get("SCN_OFFLINE_PAGES"):
        yield Path(os.environ["SCN_OFFLINE_PAGES"])
        return
    runner, slides = load_tool("execute_notebooks"), load_tool("build_slides")
    folder = Path(tempfile.mkdtemp(prefix="scn-offline-"))
    try:
        for stem in ("01_hooks", "03_export_scn"):
            runner.execute_notebook(ROOT / "notebooks" / f"{stem}.ipynb", folder, profile="ci")
        slides.web_assets.vendor(folder / "slides")
        for stem in ("01_hooks", "03_export_scn"):
            slides.build_slides(ROOT / "notebooks" / f"{stem}.ipynb", folder, folder / "slides", "ci")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def offline():
    """(browser context, list of blocked URLs): every request to another host is aborted and noted."""
    require_chromium()
    from playwright.sync_api import sync_playwright
    blocked = []

    def route(request_route):
        url = request_route.request.url
        if is_local(url):
            request_route.continue_()
        else:
            blocked.append(url)
            request_route.abort("internetdisconnected")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.route("**/*", route)
            context.set_default_timeout(60_000)
            yield context, blocked
            context.close()
        finally:
            browser.close()


def open_page(context, path: Path):
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())
    return page, errors


def first_heading(stem: str) -> str:
    nb = nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    raise AssertionError(f"{stem} has no title")


@pytest.mark.browser
def test_slides_render_with_no_network(built, offline):
    context, blocked = offline
    blocked.clear()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for stem, shot in (("01_hooks", "slides_offline.png"), ("03_export_scn", "slides_offline_03.png")):
        page, errors = open_page(context, built / "slides" / f"{stem}.slides.html")
        page.wait_for_selector(".reveal.ready", timeout=60_000)  # reveal.js (from vendor/) initialised
        present = page.locator(".slides > section.present")
        assert present.count() == 1, f"{stem}: no slide is shown"
        title = first_heading(stem)  # the notebook's title is the first slide's heading (text_content: no CSS case)
        shown = present.locator("h1").first.text_content()
        assert title.replace("`", "") in shown, (title, shown)
        page.screenshot(path=str(SCREENSHOTS / shot))
        if page.locator(".slides > section").count() > 1:  # the next slide shows too (Reveal is no global: AMD)
            page.keyboard.press("ArrowRight")
            page.wait_for_function("() => document.querySelectorAll('.slides > section')[1].classList.contains('present')")
        if stem == "03_export_scn":
            page.wait_for_selector(".scn-node-view", state="attached", timeout=60_000)  # widget state drawn
        assert page.evaluate("() => typeof MathJax !== 'undefined'"), f"{stem}: MathJax did not load from vendor/"
        page.close()
        assert not errors, f"{stem} slides: JavaScript errors {errors[:3]}"
    assert blocked == [], f"the slides asked for the network: {blocked[:5]}"


@pytest.mark.browser
def test_html_shows_widget_state_and_pictures_with_no_network(built, offline):
    context, blocked = offline
    blocked.clear()
    stem = "03_export_scn"
    nb = nbformat.read(built / f"{stem}.ipynb", as_version=4)
    pictures = sum(1 for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
                   if {"image/png", "image/svg+xml", "image/jpeg"} & set(o.get("data", {})))
    assert pictures >= 3, f"{stem}: expected the stage pictures in the outputs, found {pictures}"
    page, errors = open_page(context, built / f"{stem}.html")
    view = page.locator(".scn-node-view")
    view.wait_for(timeout=60_000)  # drawn by vendor/html-manager/embed-amd.js from the saved widget state
    assert "(node 1 of 40)" in view.inner_text(), view.inner_text()
    assert page.get_by_role("button", name="Next", exact=True).count() == 1
    deadline = time.monotonic() + 30
    while True:  # every <img> decoded (naturalWidth > 0)
        broken = page.evaluate("() => Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                               ".map(i => (i.src || '').slice(0, 60))")
        if not broken or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    images = page.evaluate("() => document.images.length")
    assert images >= pictures and not broken, f"{images} <img> in the page, {pictures} pictures in outputs; broken: {broken}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    view.evaluate("element => element.closest('.widget-vbox').scrollIntoView({block: 'start'})")
    time.sleep(0.3)
    page.screenshot(path=str(SCREENSHOTS / "html_offline.png"))
    page.close()
    assert not errors, f"{stem}.html: JavaScript errors {errors[:3]}"
    assert blocked == [], f"the HTML asked for the network: {blocked[:5]}"
