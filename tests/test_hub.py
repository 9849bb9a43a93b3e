"""A class on a real JupyterHub (jupyterhub_config.py): two students log in, each reaches only their own server,
and a student's Netron view answers only through that student's own server with its secret.

The hub runs on 127.0.0.1 with configurable-http-proxy from tools/hub/package-lock.json (`npm ci` into
build/hub/, once) and jupyterhub from the `test` extra; without either the test is skipped, except in CI
(CI=true) where it fails. Each student's Netron view is started by a kernel of their own server (the
workbook's NetronServer, which finds the prefix in JUPYTERHUB_SERVICE_PREFIX). Screenshots go to build/hub/.
"""
import dataclasses
import http.server
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers.viz.netron import free_port
from tests.browser_support import wait_for_netron_graph
from tests.conftest import ROOT
from tests.test_netron_view import CHROMIUM_ARGS, browser, save_model  # noqa: F401 (browser: a fixture)

pytestmark = pytest.mark.hub
HUB_DIR = ROOT / "build" / "hub"
CHP = HUB_DIR / "node_modules" / ".bin" / "configurable-http-proxy"


def missing(message: str):
    """Skip (with the fix), except in CI where a skipped hub test would hide a broken class."""
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: the hub test may not be skipped)")
    pytest.skip(message)


def install_proxy() -> None:
    """configurable-http-proxy, pinned by tools/hub/package-lock.json, into build/hub/node_modules (once)."""
    lock = (ROOT / "tools" / "hub" / "package-lock.json").read_bytes()
    if CHP.is_file() and (HUB_DIR / "package-lock.json").is_file() and (HUB_DIR / "package-lock.json").read_bytes() == lock:
        return
    if shutil.which("npm") is None:
        missing("npm is missing: install Node.js 20 (configurable-http-proxy runs on it)")
    HUB_DIR.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(ROOT / "tools" / "hub" / name, HUB_DIR / name)
    done = subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=HUB_DIR,
                          capture_output=True, text=True, timeout=180)
    if done.returncode != 0 or not CHP.is_file():
        missing(f"npm ci in {HUB_DIR} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A running JupyterHub on 127.0.0.1, as jupyterhub_config.py sets it up; yields (url, password, state folder)."""
    pytest.importorskip("requests")
    try:
        import jupyterhub  # noqa: F401
    except ImportError:
        missing("jupyterhub is not installed: pip install '.[test]' (it is in the test extra)")
    install_proxy()
    state = tmp_path_factory.mktemp("hub")
    port, password = free_port(), secrets.token_hex(8)
    env = {**os.environ, "SCN_HUB_DIR": str(state), "SCN_HUB_PASSWORD": password, "SCN_HUB_PORT": str(port),
           "SCN_HUB_USERS": "ana ben"}
    command = [sys.executable, "-m", "jupyterhub", "-f", str(ROOT / "jupyterhub_config.py"),
               f"--JupyterHub.hub_port={free_port()}",
               f"--ConfigurableHTTPProxy.api_url=http://127.0.0.1:{free_port()}"]
    log = open(state / "hub.log", "wb")
    process = subprocess.Popen(command, cwd=state, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: status(url + "/hub/health") == 200, 90, "the hub did not answer", state / "hub.log")
        yield url, password, state
    finally:
        process.terminate()  # the hub stops the students' servers and the proxy it started
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def status(url: str, session=None) -> int:
    """The final HTTP status of a GET (redirects followed), 0 when nothing answers."""
    import requests
    try:
        return (session or requests).get(url, timeout=10, proxies={"http": None}).status_code
    except requests.RequestException:
        return 0


def wait_for(ready, timeout: float, what: str, log: Path = None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log and log.is_file() else ""
            raise AssertionError(f"{what} within {timeout:.0f} s\n{tail}")
        time.sleep(0.5)


def log_in(url: str, name: str, password: str):
    """A requests session logged in as `name`, whose server has started and answers."""
    import requests
    session = requests.Session()
    session.trust_env = False  # our own machine: no proxy
    session.get(f"{url}/hub/login", timeout=10)
    reply = session.post(f"{url}/hub/login?next=", timeout=60,
                         data={"username": name, "password": password, "_xsrf": session.cookies.get("_xsrf")})
    assert reply.status_code == 200, f"login as {name}: {reply.status_code}"
    session.get(f"{url}/hub/spawn/{name}", timeout=60)  # starts the server (or finds it started)

    def lab_opens() -> bool:  # while the server starts, the hub shows its spawn-pending page instead
        try:
            page = session.get(f"{url}/user/{name}/lab", timeout=10)  # also sets the server's own cookie (OAuth)
        except requests.RequestException:
            return False
        return page.status_code == 200 and page.url.endswith(f"/user/{name}/lab")

    wait_for(lab_opens, 90, f"{name}'s JupyterLab did not open")
    assert status(f"{url}/user/{name}/api/status", session) == 200
    return session


@dataclasses.dataclass
class View:
    """A Netron view a student's kernel started: the address its notebook shows, and what the address holds."""
    url: str  # /user/<name>/proxy/<port>/<secret>/
    port: int
    secret: str
    model_path: Path


def start_view(url: str, session, home: Path, name: str) -> View:
    """Start a kernel in `name`'s server (REST, as JupyterLab does) and serve a model from it with NetronServer."""
    model = save_model(home, "scn.onnx")
    reply = session.post(f"{url}/user/{name}/api/sessions", timeout=60,
                         headers={"X-XSRFToken": session.cookies.get("_xsrf", path=f"/user/{name}/")},
                         json={"path": "view.ipynb", "type": "notebook", "kernel": {"name": "python3"}})
    assert reply.status_code == 201, f"{name}: a kernel did not start: {reply.status_code} {reply.text[:200]}"
    from jupyter_client import BlockingKernelClient
    kernel = reply.json()["kernel"]["id"]
    client = BlockingKernelClient(connection_file=str(home / ".local/share/jupyter/runtime" / f"kernel-{kernel}.json"))
    client.load_connection_file()
    client.start_channels(hb=False)
    try:
        client.wait_for_ready(timeout=120)
        printed = []
        code = "from helpers.viz.netron import NetronServer\nview = NetronServer('scn.onnx').start()\nprint(view.url)"
        done = client.execute_interactive(code, timeout=120, output_hook=lambda msg: printed.append(
            msg["content"].get("text", "") + msg["content"].get("evalue", "")))
        assert done["content"]["status"] == "ok", "".join(printed)
    finally:
        client.stop_channels()
    found = re.fullmatch(rf"(/user/{name}/proxy/(\d+)/([A-Za-z0-9_-]{{32}})/)\n", "".join(printed))
    assert found, f"{name}'s kernel printed {''.join(printed)!r}, not /user/{name}/proxy/<port>/<secret>/"
    return View(found.group(1), int(found.group(2)), found.group(3), model)


@pytest.fixture(scope="module")
def class_of_two(hub):
    """ana and ben logged in, each with a Netron view their own kernel started."""
    url, password, state = hub
    ana, ben = log_in(url, "ana", password), log_in(url, "ben", password)
    ana_view = start_view(url, ana, state / "home" / "ana", "ana")
    ben_view = start_view(url, ben, state / "home" / "ben", "ben")
    yield url, password, ana, ben, ana_view, ben_view


def test_the_proxy_reaches_any_local_port(class_of_two):
    """Why the secret is needed: a student's jupyter-server-proxy forwards to any port of 127.0.0.1."""
    url, _, ana, _, _, _ = class_of_two
    open_server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=open_server.serve_forever, daemon=True).start()
    try:
        assert status(f"{url}/user/ana/proxy/{open_server.server_address[1]}/", ana) == 200
    finally:
        open_server.shutdown()
        open_server.server_close()


def test_each_student_reaches_only_their_own_server_and_view(class_of_two):
    url, password, ana, ben, ana_view, ben_view = class_of_two
    import requests
    assert ana_view.url == f"/user/ana/proxy/{ana_view.port}/{ana_view.secret}/"  # what ana's notebook shows
    page = ana.get(url + ana_view.url, timeout=10)
    assert page.status_code == 200 and "<title>Netron</title>" in page.text
    assert ana.get(url + ana_view.url + "data/scn.onnx", timeout=10).content == ana_view.model_path.read_bytes()
    assert status(url + ben_view.url, ben) == 200  # ben sees his own
    refused = {
        "ana's own view without the secret": f"/user/ana/proxy/{ana_view.port}/",
        "ana's proxy to ben's port": f"/user/ana/proxy/{ben_view.port}/",
        "ana's proxy to ben's port, with ben's secret": f"/user/ana/proxy/{ben_view.port}/{ben_view.secret}/",
        "ana's proxy to ben's model": f"/user/ana/proxy/{ben_view.port}/{ben_view.secret}/data/scn.onnx",
        "ana's absolute proxy to ben's port": f"/user/ana/proxy/absolute/{ben_view.port}/{ben_view.secret}/",
        "ben's view with ana's cookies": ben_view.url,
        "ben's server with ana's cookies": "/user/ben/api/status",
        "ben's JupyterLab with ana's cookies": "/user/ben/lab",
    }
    got = {what: status(url + path, ana) for what, path in refused.items()}
    assert all(code == 403 for code in got.values()), got
    anonymous = requests.Session()
    anonymous.trust_env = False
    page = anonymous.get(url + ana_view.url, timeout=10)  # no cookie: the hub asks for a login
    assert page.status_code == 200 and "/hub/login" in page.url


def test_screenshots_of_a_view_and_a_refusal(class_of_two, browser):  # noqa: F811 (the fixture)
    from playwright.sync_api import Error as PlaywrightError
    url, password, _, _, ana_view, ben_view = class_of_two
    HUB_DIR.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    try:
        context.add_cookies([{"name": "consent", "value": "1", "url": url}])
        page = context.new_page()
        page.goto(f"{url}/hub/login?next=" + ana_view.url)
        page.fill("#username_input", "ana")
        page.fill("#password_input", password)
        page.click("#login_submit")
        page.wait_for_url(re.compile(re.escape(ana_view.url) + "$"), timeout=60_000)
        assert wait_for_netron_graph(page, timeout=90) > 0
        page.screenshot(path=str(HUB_DIR / "ana_netron.png"))
        ben_through_ana = f"{url}/user/ana/proxy/{ben_view.port}/{ben_view.secret}/"
        assert context.request.get(ben_through_ana).status == 403  # the browser's cookies, ben's address
        with pytest.raises(PlaywrightError, match="ERR_HTTP_RESPONSE_CODE_FAILURE"):
            page.goto(ben_through_ana)  # an empty 403: Chromium shows its own error page
        page.screenshot(path=str(HUB_DIR / "ana_to_ben_refused.png"))
        reply = page.goto(f"{url}/user/ben/lab")
        assert reply.status == 403
        page.screenshot(path=str(HUB_DIR / "ana_to_ben_lab_refused.png"))
    finally:
        context.close()
