"""netron in its own process: the model's bytes served from memory (nothing on disk), a free port, a clean
stop, also when the kernel is killed; and the address a browser gets: direct, or through jupyter-server-proxy.

The browser test opens the page in Debian's Chromium (/usr/bin/chromium) with Playwright and counts
the operator nodes netron draws. Without Chromium it is skipped, except in CI (CI=true) where it fails.
"""
import datetime
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import onnx
import pytest

from helpers.errors import WorkbookError
from helpers.viz.netron import (NetronServer, http_ok, jupyter_server_info, netron_build_age_days, netron_build_date,
                                netron_url, netron_warning, proxy_prefix, show_netron)
from tests.browser_support import wait_for_netron_graph
from tests.conftest import ROOT
from tests.test_graph_picture import toy_model

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOT = ROOT / "build" / "screenshots" / "netron_toy.png"


def save_model(folder: Path, name: str, graph_name: str = "scn") -> Path:
    """Write the toy graph to folder/name and return the path."""
    path = folder / name
    onnx.save(toy_model(graph_name), str(path))
    return path


def get(url: str) -> bytes:
    """The body of an HTTP GET (raises for 404)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return response.read()


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def toy_onnx(tmp_path):
    """The toy model, with a private file beside it that netron must NOT serve."""
    (tmp_path / "private.txt").write_text("not for netron")
    return save_model(tmp_path, "toy.onnx")


def test_the_server_serves_the_model_alone_on_a_free_port(toy_onnx):
    with NetronServer(toy_onnx) as server:
        assert server.running and server.url == f"http://127.0.0.1:{server.port}/{server.secret}/"
        page = get(server.url).decode("utf-8")
        assert "<title>Netron</title>" in page and '<meta name="file" content="/data/toy.onnx">' in page
        assert get(server.url + "data/toy.onnx") == toy_onnx.read_bytes()
        for other in ("private.txt", "..%2Fprivate.txt", "%2Fetc%2Fpasswd", "toy.onnx%2F..%2Fprivate.txt"):
            with pytest.raises(urllib.error.HTTPError):  # no other file of any folder
                get(server.url + "data/" + other)


def test_the_server_serves_the_bytes_it_read_at_start(toy_onnx):
    before = toy_onnx.read_bytes()
    with NetronServer(toy_onnx) as server:
        toy_onnx.write_bytes(b"changed after start")
        assert get(server.url + "data/toy.onnx") == before  # a snapshot, as a copy was; but in memory


def test_stop_frees_the_port(toy_onnx):
    server = NetronServer(toy_onnx).start()
    port, process = server.port, server.process
    server.stop()
    assert process.poll() is not None and not server.running
    assert port_is_free(port) and not http_ok(f"http://127.0.0.1:{port}/")
    server.stop()  # a second stop does nothing
    assert "stopped" in repr(server)


def test_two_servers_at_the_same_time_do_not_collide(tmp_path):
    first = save_model(tmp_path, "first.onnx", graph_name="first_graph")
    second = save_model(tmp_path, "second.onnx", graph_name="second_graph")
    with NetronServer(first) as a, NetronServer(second) as b:
        assert a.port != b.port
        assert b'content="/data/first.onnx"' in get(a.url) and b'content="/data/second.onnx"' in get(b.url)
        assert get(a.url + "data/first.onnx") == first.read_bytes()
        assert get(b.url + "data/second.onnx") == second.read_bytes()
        assert b"first_graph" in get(a.url + "data/first.onnx") and b"second_graph" in get(b.url + "data/second.onnx")


def test_a_missing_or_empty_model_is_a_workbook_error(tmp_path):
    with pytest.raises(WorkbookError, match="nothing.onnx: model file not found"):
        NetronServer(tmp_path / "nothing.onnx").start()
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(WorkbookError, match="empty.onnx: the file is empty"):
        NetronServer(tmp_path / "empty.onnx").start()


def test_nothing_is_left_behind_however_the_python_that_started_it_ends(toy_onnx, tmp_path):
    """Issue 11: a kernel shut down or killed left the model's copy in /tmp. Now nothing is ever written:
    the parent runs with its own empty TMPDIR, which must stay empty while netron serves and after the end
    (normal exit; SIGKILL of the parent alone; SIGKILL of its whole process group, as jupyter_client does)."""
    script = ("import os, sys, time; from helpers.viz.netron import NetronServer; "
              f"s = NetronServer({str(toy_onnx)!r}).start(); print(s.port, s.process.pid, flush=True); "
              "time.sleep(float(sys.argv[1]))")
    for pause, how in [("0", "normal exit (atexit)"), ("60", "SIGKILL"), ("60", "SIGKILL of the process group")]:
        temp = tmp_path / f"tmp-{len(how)}"
        temp.mkdir()
        parent = subprocess.Popen([sys.executable, "-c", script, pause], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "TMPDIR": str(temp)}, start_new_session=True)
        port, child = parent.stdout.readline().split()
        assert os.listdir(temp) == [], f"netron wrote {os.listdir(temp)} while serving"
        if how == "SIGKILL":
            parent.kill()
        elif how.endswith("group"):
            os.killpg(parent.pid, 9)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while not port_is_free(int(port)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert port_is_free(int(port)), f"netron (pid {child}) still serves after its parent's {how}"
        assert os.listdir(temp) == [], f"{os.listdir(temp)} left behind after the parent's {how}"


# The address a browser gets (no server is started for these: only the choice is computed).
HUB = {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/"}
LOCAL_LAB = {"base_url": "/", "hostname": "localhost", "pid": 1}
PREFIXED_LAB = {"base_url": "/user/student/", "hostname": "localhost", "pid": 1}
OPEN_LAB = {"base_url": "/", "hostname": "0.0.0.0", "pid": 1}


def no_server(env):
    return None


@pytest.mark.parametrize("setting, env, server, expected", [
    (None, {}, None, "http://127.0.0.1:45678/"),  # a script, VS Code: no Jupyter server
    (None, {}, LOCAL_LAB, "http://127.0.0.1:45678/"),  # a local JupyterLab keeps the direct view
    (None, HUB, None, "/user/alice/proxy/45678/"),  # JupyterHub
    (None, {}, PREFIXED_LAB, "/user/student/proxy/45678/"),  # a JupyterLab with a base_url
    (None, {}, OPEN_LAB, "/proxy/45678/"),  # a JupyterLab listening for other machines (0.0.0.0)
    (None, {}, {"base_url": "/", "hostname": "localhost", "sock": "/run/jl.sock", "pid": 1}, "/proxy/45678/"),
    (None, {"SCN_NETRON_PROXY": "0"}, PREFIXED_LAB, "http://127.0.0.1:45678/"),  # the setting wins
    (None, {"SCN_NETRON_PROXY": "0", **HUB}, None, "http://127.0.0.1:45678/"),
    (None, {"SCN_NETRON_PROXY": "1"}, None, "/proxy/45678/"),
    (None, {"SCN_NETRON_PROXY": "1"}, PREFIXED_LAB, "/user/student/proxy/45678/"),
    (None, {"SCN_NETRON_PROXY": "/lab/x"}, PREFIXED_LAB, "/lab/x/proxy/45678/"),
    (False, HUB, PREFIXED_LAB, "http://127.0.0.1:45678/"),  # the argument wins over everything
    (True, {"SCN_NETRON_PROXY": "0"}, LOCAL_LAB, "/proxy/45678/"),
    ("/course/", {}, None, "/course/proxy/45678/"),
])
def test_the_address_a_browser_gets(setting, env, server, expected):
    assert netron_url(45678, setting, env=env, server=server or {}) == expected


def test_a_wrong_setting_is_a_workbook_error():
    with pytest.raises(WorkbookError, match="SCN_NETRON_PROXY='maybe'.*0 \\(direct\\), 1"):
        proxy_prefix(env={"SCN_NETRON_PROXY": "maybe"}, find_server=no_server)


def test_the_kernel_finds_the_server_that_started_it(tmp_path):
    """jupyter_client gives the kernel JPY_PARENT_PID (the server's pid); the server wrote jpserver-<pid>.json."""
    server = {"base_url": "/user/student/", "hostname": "127.0.0.1", "port": 8888, "pid": os.getpid()}
    (tmp_path / f"jpserver-{os.getpid()}.json").write_text(json.dumps(server))
    (tmp_path / "jpserver-1.json").write_text(json.dumps({**server, "pid": 1, "base_url": "/other/"}))
    env = {"JPY_PARENT_PID": str(os.getpid())}
    assert jupyter_server_info(env, [tmp_path]) == server
    assert proxy_prefix(env=env, find_server=lambda e: jupyter_server_info(e, [tmp_path])) == "/user/student/"
    assert jupyter_server_info({"JPY_PARENT_PID": "999999999"}, [tmp_path]) is None  # no file of that pid
    (tmp_path / "jpserver-7.json").write_text(json.dumps({**server, "pid": 8}))  # a file that is not its pid's
    assert jupyter_server_info({"JPY_PARENT_PID": "7"}, [tmp_path]) is None
    (tmp_path / "jpserver-9.json").write_text("{half a file")
    assert jupyter_server_info({"JPY_PARENT_PID": "9"}, [tmp_path]) is None
    server_env = {"JUPYTER_RUNTIME_DIR": str(tmp_path)}  # without JPY_PARENT_PID: the parent process
    assert jupyter_server_info(server_env) is None or jupyter_server_info(server_env)["pid"] == os.getppid()


def test_a_kernel_started_by_a_real_jupyter_server_finds_its_base_url(tmp_path):
    """A kernel started by a real JupyterLab (through jupyter_client, as a browser would) computes the proxied
    address for base_url /user/student/: JPY_PARENT_PID and the runtime folder are all it needs."""
    pytest.importorskip("jupyter_server")
    from tests.browser_support import JupyterLab
    lab = JupyterLab(tmp_path, tmp_path / "jupyter", env={"PYTHONPATH": str(ROOT)}, base_url="/user/student/")
    try:
        lab.start()
        session = lab.api("POST", "api/sessions", body={"path": "probe.ipynb", "type": "notebook",
                                                         "kernel": {"name": "python3"}})
        reply = lab.execute(session["kernel"]["id"], "from helpers.viz.netron import netron_url; "
                                                     "print(netron_url(45678))")
        assert reply.strip() == "/user/student/proxy/45678/", reply
    finally:
        lab.stop()
    assert lab.leftovers == []


def test_build_age_and_warning():
    built = netron_build_date()
    assert built is not None and built.tzinfo is not None  # netron's index.html has <meta name="date">
    later = built + datetime.timedelta(days=200)
    assert netron_build_age_days(later) == pytest.approx(200.0)
    warning = netron_warning(later)
    assert warning is not None and "\n" not in warning and "pip install -U netron" in warning
    assert netron_warning(built + datetime.timedelta(days=10)) is None


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright; skipped (with the fix) when missing, except in CI (CI=true)."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing; install it with `make system-deps` (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: the browser test may not be skipped)")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_a_real_browser_shows_the_toy_graph(toy_onnx, browser):
    model = toy_model()
    with NetronServer(toy_onnx) as server:
        context = browser.new_context(viewport={"width": 1000, "height": 800})
        context.add_cookies([{"name": "consent", "value": "1", "url": f"http://127.0.0.1:{server.port}"}])
        page = context.new_page()
        page.goto(server.url)
        assert wait_for_netron_graph(page, timeout=60) == len(model.graph.node)
        drawn = page.locator("#canvas g.graph-node")
        op_types = [drawn.nth(i).locator("text").first.text_content() for i in range(drawn.count())]
        names = [drawn.nth(i).locator("title").first.text_content() for i in range(drawn.count())]
        assert sorted(op_types) == sorted(n.op_type for n in model.graph.node)  # the boxes' headers
        assert sorted(names) == sorted(n.name for n in model.graph.node)  # the headers' tooltips
        assert page.locator("#canvas .graph-item-input").count() == 1  # header of the graph input box
        assert page.locator("#canvas .graph-item-output").count() == 1  # header of the graph output box
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))
        context.close()


def test_without_the_consent_cookie_the_wait_reports_the_dialog(toy_onnx, browser):
    with NetronServer(toy_onnx) as server:
        context = browser.new_context()
        page = context.new_page()
        page.goto(server.url)
        with pytest.raises(WorkbookError, match="uses cookies"):
            wait_for_netron_graph(page, timeout=30)
        context.close()


def test_show_netron_returns_a_running_server(toy_onnx, capsys):
    server = show_netron(toy_onnx, height=300)
    try:
        assert server.running and http_ok(server.url)
        assert "IFrame" in capsys.readouterr().out  # outside a notebook, display() prints the repr
    finally:
        server.stop()


# ----------------------------------------------------------------------------- hostile names, ports and hosts
def request(url: str, headers: dict) -> int:
    """The HTTP status `url` answers with these headers (no proxy: this is our own machine)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_a_model_named_with_markup_reaches_the_page_as_text(tmp_path):
    model = save_model(tmp_path, 'a"><img src=x onerror=alert(1)>.onnx')
    with NetronServer(model, proxy=False) as server:
        page = get(server.local_url).decode()
        data = get(server.local_url + "data/" + "a___img_src_x_onerror_alert_1__.onnx")
    assert "<img src=x onerror" not in page  # netron writes the name into the page unescaped: it must be harmless
    assert '<meta name="name" content="a___img_src_x_onerror_alert_1__.onnx">' in page
    assert data == model.read_bytes()


def test_a_port_taken_between_the_choice_and_the_bind_is_an_error(toy_onnx, monkeypatch):
    """Another process answers on the chosen port: start() must not call that process's page ours."""
    import http.server
    import threading
    import helpers.viz.netron as viewer
    other = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(viewer, "free_port", lambda: other.server_address[1])
        with pytest.raises(WorkbookError, match="did not answer"):
            NetronServer(toy_onnx, proxy=False).start(timeout=20)
    finally:
        other.shutdown()
        other.server_close()


def test_only_loopback_host_names_or_the_proxy_are_answered(toy_onnx):
    with NetronServer(toy_onnx, proxy="/user/alice/") as server:
        port, url = server.port, server.local_url
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
            assert request(url, {"Host": host}) == 200, host
        for host in (f"attacker.example:{port}", "127.0.0.1.attacker.example", "localhost.evil", ""):
            assert request(url, {"Host": host}) == 403, host
        forwarded = {"Host": "hub.example.org", "X-Forwarded-Context": f"/user/alice/proxy/{port}"}
        assert request(url, forwarded) == 200  # what jupyter-server-proxy sends: the browser's Host, its context
        forwarded["X-Forwarded-Context"] = f"/user/bob/proxy/{port}"
        assert request(url, forwarded) == 403


def test_only_the_address_with_the_secret_is_answered(toy_onnx):
    """Another student's jupyter-server-proxy reaches any port of 127.0.0.1: without the secret, nothing."""
    with NetronServer(toy_onnx, proxy="/user/alice/") as server, NetronServer(toy_onnx, proxy=False) as other:
        port, root = server.port, f"http://127.0.0.1:{server.port}/"
        assert server.secret != other.secret and len(server.secret) >= 32
        assert server.url == f"/user/alice/proxy/{port}/{server.secret}/"  # what the notebook shows
        assert request(server.local_url, {}) == 200 and request(server.local_url + "data/toy.onnx", {}) == 200
        forwarded = {"Host": "hub.example.org", "X-Forwarded-Context": f"/user/alice/proxy/{port}"}
        assert request(server.local_url, forwarded) == 200
        wrong = server.secret[:-1] + ("A" if server.secret[-1] != "A" else "B")
        for path in ("", "index.html", "data/toy.onnx", f"{wrong}/", f"{wrong}/data/toy.onnx", server.secret,
                     f"{other.secret}/", f"x/{server.secret}/", f"{server.secret.upper()}/", f"?{server.secret}/"):
            assert request(root + path, {}) == 403, path
            assert request(root + path, forwarded) == 403, path
        assert request(server.local_url, {"Host": "attacker.example"}) == 403  # the secret alone is not enough
        bob = {"Host": "127.0.0.1:8000", "X-Forwarded-Context": f"/user/bob/proxy/{port}"}  # a hub on loopback
        assert request(server.local_url, bob) == 403  # bob's proxy, even with alice's secret
        assert request(other.local_url, {"X-Forwarded-Context": f"/proxy/{other.port}"}) == 403  # direct: no proxy


def test_the_secret_is_not_on_the_command_line(toy_onnx):
    """`ps` shows every process's command line to every OS user; the secret travels in the environment."""
    with NetronServer(toy_onnx) as server:
        command = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
        assert server.secret.encode() not in command
        assert http_ok(server.local_url) and not http_ok(f"http://127.0.0.1:{server.port}/")
