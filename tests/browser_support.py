"""What the browser test needs: Debian's Chromium, a private JupyterLab, and the DOM facts of JupyterLab 4.6.

`JupyterLab` starts `python -m jupyterlab` on a free port of 127.0.0.1 with a token, in its own process
group, with private Jupyter config / data / runtime / IPython / settings / workspace folders (the user's own
are never read or written), and remembers every process it starts (kernels, and the netron servers the
kernels start), so that `stop()` can shut them all down and say which ones did not end by themselves.

The DOM facts were read off a running JupyterLab 4.6:
  * A Python exception (output_type "error") is rendered by the SAME renderer as stderr text: an output
    `.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]` whose `<pre>` holds IPython's
    coloured traceback. Warnings and `print(..., file=sys.stderr)` use that mime type too. What only an
    exception shows is IPython's last line, the exception's name in red followed by a colon:
    `<span class="ansi-red-fg">ZeroDivisionError</span>: division by zero` (SyntaxError and SystemExit put
    the colon in a red span of its own). A traceback printed by `traceback.print_exc()` or `logging` has no
    colours, so it is not taken for an error (it is not one: the cell went on).
  * A cell's prompt `.jp-InputPrompt` reads `[*]:` while the cell waits or runs, `[7]:` once it ran,
    `[ ]:` when it never ran (Run All stops at the first exception).
  * The kernel state is in the notebook toolbar: `.jp-Notebook-ExecutionIndicator[data-status]`
    ("idle", "busy", "starting", "dead", ...).
"""
import html
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

import psutil
import pytest

from helpers.errors import WorkbookError
from helpers.viz.netron import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
HOST = "127.0.0.1"

# DOM selectors (JupyterLab 4.6)
CELL = ".jp-Notebook .jp-Cell"
CODE_CELL_CLASS = "jp-CodeCell"
INPUT_PROMPT = ".jp-InputPrompt"
STDERR_OUTPUT = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
STDOUT_OUTPUT = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stdout"]'
KERNEL_INDICATOR = ".jp-Notebook-ExecutionIndicator"
DIALOG = ".jp-Dialog"
MENU_BAR = ".lm-MenuBar"
MENU_COMMAND = '.lm-Menu li[data-command="{}"]'  # an item of an open menu, by its command id

# IPython's last traceback line as JupyterLab renders it (inner HTML of the <pre>): red name, then a colon.
EXCEPTION_LINE = re.compile(r'(?:^|\n)<span class="ansi-red-fg">([A-Za-z_][\w.]*)</span>'
                            r'(?:<span class="ansi-red-fg">:</span>|:)')
TAG = re.compile(r"<[^>]+>")

# JupyterLab settings for the test: no news / update toasts, every cell in the DOM (windowing off: with
# windowing a cell scrolled away is detached, and an iframe that is re-attached reloads its page, while
# the netron server behind it may already be stopped), no kernel dialog, no autosave.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "autoStartDefaultKernel": True},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
}


def require_chromium() -> None:
    """Skip (with the fix) when Chromium or Playwright is missing; in CI (CI=true) fail instead."""
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright Python package is missing (pip install -r requirements.lock)"
    if problem is None:
        return
    message = f"{problem}: the browser test needs Debian's Chromium; install it with `make system-deps`"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: the browser test may not be skipped)", pytrace=False)
    pytest.skip(message)


def describe(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid}: {' '.join(process.cmdline())[:160]}"
    except psutil.Error:
        return f"pid {process.pid}"


class JupyterLab:
    """A private JupyterLab serving `root_dir`; `env` is added to the environment of the server and kernels."""

    def __init__(self, root_dir: Path, state_dir: Path, env: Dict[str, str], base_url: str = "/"):
        self.root_dir, self.state_dir, self.extra_env = Path(root_dir), Path(state_dir), env
        self.base_url = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"  # as JupyterHub's /user/NAME/
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.process: Optional[subprocess.Popen] = None
        self.log_path = self.state_dir / "jupyterlab.log"
        self.seen: Dict[int, psutil.Process] = {}  # every process the server started, while alive
        self.leftovers: List[str] = []  # processes that did not end by themselves at stop()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{self.base_url}"

    def environment(self) -> Dict[str, str]:
        dirs = {name: self.state_dir / name for name in ("config", "data", "runtime", "ipython", "settings",
                                                          "workspaces")}
        for folder in dirs.values():
            folder.mkdir(parents=True, exist_ok=True)
        for plugin, values in LAB_SETTINGS.items():
            path = dirs["settings"] / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values, indent=2), encoding="utf-8")
        env = {k: v for k, v in os.environ.items()
               if k not in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "SCN_NETRON_PROXY", "JUPYTERHUB_SERVICE_PREFIX")}
        env.update(JUPYTER_CONFIG_DIR=str(dirs["config"]), JUPYTER_DATA_DIR=str(dirs["data"]),
                   JUPYTER_RUNTIME_DIR=str(dirs["runtime"]), IPYTHONDIR=str(dirs["ipython"]),
                   JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]), JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
                   PYTHONUNBUFFERED="1")
        env.update(self.extra_env)
        return env

    def check_kernel_spec(self, env: Dict[str, str]) -> None:
        """"python3" must be this Python's kernel (the venv's spec, whose argv "python" means sys.executable)."""
        listed = subprocess.run([sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"], env=env,
                                capture_output=True, text=True, timeout=60)
        specs = json.loads(listed.stdout or "{}").get("kernelspecs", {})
        spec = specs.get("python3")
        assert spec is not None, f"no python3 kernel spec with the test's Jupyter folders: {listed.stderr[-500:]}"
        argv0 = spec["spec"]["argv"][0]
        assert argv0 in ("python", "python3", sys.executable) or Path(argv0).resolve() == Path(sys.executable).resolve(), \
            f"kernel spec python3 at {spec['resource_dir']} runs {argv0}, not this Python ({sys.executable})"

    def start(self, timeout: float = 90.0) -> "JupyterLab":
        env = self.environment()
        self.check_kernel_spec(env)
        command = [sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser",
                   f"--ServerApp.ip={HOST}", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
                   f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root_dir}",
                   f"--ServerApp.base_url={self.base_url}",
                   f"--LabApp.user_settings_dir={env['JUPYTERLAB_SETTINGS_DIR']}",
                   f"--LabApp.workspaces_dir={env['JUPYTERLAB_WORKSPACES_DIR']}",
                   "--LabApp.news_url=None", "--LabApp.expose_app_in_browser=True",
                   "--ServerApp.terminals_enabled=False"]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=self.root_dir, env=env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.api("GET", "api/status")
                return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"JupyterLab did not answer on {self.url} within {timeout:.0f} s "
                                     f"(exit code {self.process.poll()}); its log ends:\n{self.log_tail()}")
            time.sleep(0.25)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def api(self, method: str, path: str, timeout: float = 10.0, body: Optional[dict] = None):
        """A REST call with the token; the parsed JSON answer (None when empty). Never through a proxy."""
        request = urllib.request.Request(self.url + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"token {self.token}",
                                                  "Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def lab_url(self, path: str, workspace: str) -> str:
        """A fresh workspace (?reset) that opens `path`: no tab of another notebook comes back."""
        return f"{self.url}lab/workspaces/{workspace}/tree/{path}?reset&token={self.token}"

    def execute(self, kernel_id: str, code: str, timeout: float = 120.0) -> str:
        """Run `code` in a kernel the server started (through its connection file); return what it printed."""
        from jupyter_client import BlockingKernelClient
        client = BlockingKernelClient(connection_file=str(self.state_dir / "runtime" / f"kernel-{kernel_id}.json"))
        client.load_connection_file()
        client.start_channels(hb=False)  # no heartbeat: on a busy machine a late beat is not a dead kernel
        try:
            client.wait_for_ready(timeout=timeout)  # kernel_info answered
            printed = []
            reply = client.execute_interactive(code, timeout=timeout, output_hook=lambda msg: printed.append(
                msg["content"].get("text", "") if msg["msg_type"] == "stream" else
                msg["content"].get("evalue", "") if msg["msg_type"] == "error" else ""))
            assert reply["content"]["status"] == "ok", f"{code!r} failed in the kernel: {''.join(printed)}"
            return "".join(printed)
        finally:
            client.stop_channels()

    def remember_children(self) -> List[psutil.Process]:
        """Note every process below the server now (kernels and their netron servers); return them."""
        if self.process is None:
            return []
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for child in children:
            self.seen.setdefault(child.pid, child)
        return children

    def kernel_processes(self, kernel_id: str) -> List[psutil.Process]:
        """The kernel's process (found by its connection file) and everything below it."""
        found = []
        for child in self.remember_children():
            try:
                if any(f"kernel-{kernel_id}.json" in part for part in child.cmdline()):
                    found.append(child)
                    found.extend(child.children(recursive=True))
            except psutil.Error:
                continue
        return found

    def shutdown_session(self, notebook_path: str, timeout: float = 20.0) -> List[str]:
        """Shut the notebook's kernel down through the REST API; return the processes that outlived it."""
        sessions = [s for s in self.api("GET", "api/sessions") if s.get("path") == notebook_path]
        processes = []
        for session in sessions:
            found = self.kernel_processes(session["kernel"]["id"])
            assert found, f"no process of kernel {session['kernel']['id']} below the server (pid {self.process.pid})"
            processes += found
            self.api("DELETE", f"api/sessions/{session['id']}")
        return self.reap(processes, timeout)

    def reap(self, processes: List[psutil.Process], timeout: float) -> List[str]:
        """Wait for `processes` to end; kill (by pid) and describe those that did not."""
        _, alive = psutil.wait_procs(processes, timeout=timeout)
        described = [describe(p) for p in alive]
        for process in alive:
            try:
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
        return described

    def stop(self) -> None:
        """Shut down every kernel, then the server (its process group); note what did not end by itself."""
        if self.process is None:
            return
        self.remember_children()
        try:
            for kernel in self.api("GET", "api/kernels"):
                self.api("DELETE", f"api/kernels/{kernel['id']}", timeout=30)
        except (OSError, ValueError):
            pass  # the server may be gone already; the signals below still stop everything
        try:
            os.killpg(self.process.pid, signal.SIGTERM)  # a SIGTERM'd server also shuts its kernels down
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.leftovers.append(f"pid {self.process.pid}: the JupyterLab server (ignored SIGTERM)")
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        try:
            os.killpg(self.process.pid, 0)  # anything left in the server's process group?
            os.killpg(self.process.pid, signal.SIGKILL)
            self.leftovers.append(f"process group {self.process.pid} still had members after the server ended")
        except ProcessLookupError:
            pass
        # kernels run in process groups of their own, netron servers are their children: wait for each
        self.leftovers += self.reap(list(self.seen.values()), timeout=20)
        self.process = None


def exception_name(pre_html: str) -> Optional[str]:
    """The exception's name when the inner HTML of a stderr output's <pre> is a rendered exception, else None."""
    names = EXCEPTION_LINE.findall(pre_html)
    return names[-1] if names else None


def plain_text(pre_html: str) -> str:
    return html.unescape(TAG.sub("", pre_html))


def exceptions_in_cells(cells) -> List[dict]:
    """Every exception JupyterLab renders in the output areas of the cells (a Locator): index, name, text."""
    stderr_html = cells.evaluate_all(
        "(cells, selector) => cells.map(c => Array.from(c.querySelectorAll(selector + ' > pre'), p => p.innerHTML))",
        STDERR_OUTPUT)
    found = []
    for index, outputs in enumerate(stderr_html):
        for inner in outputs:
            name = exception_name(inner)
            if name:
                found.append({"cell": index, "exception": name,
                              "text": "\n".join(plain_text(inner).strip().splitlines()[-12:])})
    return found


def model_errors(page) -> List[dict]:
    """The error outputs (output_type "error") in the notebook model of the current tab: exact, beside the DOM."""
    return page.evaluate("""() => {
        const cells = window.jupyterapp.shell.currentWidget.model.toJSON().cells;
        const errors = [];
        cells.forEach((cell, index) => (cell.outputs || []).forEach(o => {
            if (o.output_type === 'error') errors.push({cell: index, ename: o.ename, evalue: o.evalue});
        }));
        return errors;
    }""")


def prompts(cells) -> List[Optional[str]]:
    """The input prompt of every cell ('[3]:', '[*]:', '[ ]:'); None for markdown / raw cells."""
    return cells.evaluate_all(
        "(cells, args) => cells.map(c => c.classList.contains(args[0]) ? "
        "(c.querySelector(args[1]) || {}).textContent || '' : null)", [CODE_CELL_CLASS, INPUT_PROMPT])


NODE_SELECTOR = "#canvas g.graph-node"  # one SVG group per operator node, drawn by netron's grapher.js


def wait_for_netron_graph(page, timeout: float = 60.0) -> int:
    """Wait until netron has drawn a graph in `page`; return the number of operator nodes drawn.

    `page` is anything with Playwright's `.locator()`: a Page, a Frame or a FrameLocator (an
    iframe in JupyterLab). netron draws each operator as `<g class="node graph-node">` inside
    `<svg id="canvas">` (graph inputs and outputs are other boxes, with headers of class
    `graph-item-input` / `graph-item-output`; they are not counted) and sets
    `<body class="default">` once drawing is done. A dialog (cookie consent, "Please update",
    a load error) sets body class `alert` or `notification`: that is an error, except the note
    netron shows while a layout takes longer than 2.5 s (then we keep waiting).
    We poll with locators, not `page.evaluate()`: netron replaces `window.eval`, which breaks
    Playwright's evaluate functions on its page.
    """
    deadline = time.monotonic() + timeout
    while True:
        body = page.locator("body").get_attribute("class", timeout=5000) or ""
        classes = body.split()
        nodes = page.locator(NODE_SELECTOR).count()
        if "default" in classes and nodes > 0:
            return nodes
        if "alert" in classes or "notification" in classes:
            message = (page.locator("#message-text").text_content(timeout=5000) or "").strip()
            if not message.startswith("This large graph layout"):
                raise WorkbookError(f"netron showed a message instead of the graph: {message!r}; set the cookie "
                                    "consent=1, update netron if it asks (pip install -U netron), or check the model")
        if time.monotonic() > deadline:
            raise WorkbookError(f"netron drew no graph within {timeout:.0f} s (body class {body!r}, {nodes} nodes); "
                                "is the server running, the consent cookie set and the model a valid ONNX file?")
        time.sleep(0.2)
