"""Show an ONNX graph with netron, inside a notebook, without ever losing track of the server.

Facts about netron (9.3.x) that shape this module:
  * `netron.serve()` runs an HTTP server in a thread of the *calling* process, and the model it
    serves is a class attribute: two models served from one process collide. So every model gets
    its own child process (`NetronServer`), which also makes stopping it simple and certain.
  * netron's `/data/<name>` route reads any file in the served model's folder. So we serve a
    COPY of the model, alone in a fresh temporary folder.
  * The page refuses to show graphs when its build is older than 180 days (it compares
    `<meta name="date">` in its index.html with the browser's clock). `netron_warning()` says so.
  * A fresh browser first shows a cookie-consent dialog; clicking "Accept" (or a cookie
    `consent=1` for the server's host) lets the graph through.
"""
import atexit
import datetime
import functools
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

from helpers.errors import WorkbookError

MAX_BUILD_AGE_DAYS = 180  # netron's own limit, in browser.js
HOST = "127.0.0.1"
NODE_SELECTOR = "#canvas g.graph-node"  # one SVG group per operator node, drawn by netron's grapher.js

# The child process: serve one model, stay alive while the process that started us lives, and
# when that one dies without stopping us (a killed kernel), delete the model's temporary folder.
CHILD_SCRIPT = """
import os, shutil, sys, time
import netron
model, port = sys.argv[1], int(sys.argv[2])
parent = os.getppid()
netron.serve(model, address=("127.0.0.1", port), browse=False)
while os.getppid() == parent:
    time.sleep(0.5)
shutil.rmtree(os.path.dirname(model), ignore_errors=True)
"""


def netron_build_date() -> Optional[datetime.datetime]:
    """The build time (UTC) written in the installed netron's index.html, or None if unknown.

    This `<meta name="date">` is exactly what netron's page compares with the clock, so it is
    the most reliable source; the version number has no date and file times are install times.
    """
    spec = importlib.util.find_spec("netron")
    if spec is None or spec.origin is None:
        return None
    index = Path(spec.origin).parent / "index.html"
    if not index.is_file():
        return None
    found = re.search(r'<meta name="date" content="([0-9-]+ [0-9:]+)"', index.read_text(encoding="utf-8"))
    if found is None:
        return None
    moment = datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S")
    return moment.replace(tzinfo=datetime.timezone.utc)


def netron_build_age_days(now: Optional[datetime.datetime] = None) -> Optional[float]:
    """Days since the installed netron was built, or None when netron or its date is missing."""
    built = netron_build_date()
    if built is None:
        return None
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return (now - built).total_seconds() / 86400.0


def netron_warning(now: Optional[datetime.datetime] = None) -> Optional[str]:
    """A one-line warning when netron is too old to show graphs; None when all is well."""
    age = netron_build_age_days(now)
    if age is None or age <= MAX_BUILD_AGE_DAYS:
        return None
    return (f"warning: the installed netron was built {netron_build_date():%Y-%m-%d} ({age:.0f} days ago); "
            f"netron refuses to show graphs from builds older than {MAX_BUILD_AGE_DAYS} days: "
            "run `pip install -U netron` and restart the kernel")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (the system picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def http_ok(url: str) -> bool:
    """True when `url` answers HTTP 200; never goes through a proxy (this is our own machine)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def stop_process(process: subprocess.Popen, folder: str) -> None:
    """Terminate the netron child process and delete its temporary folder (safe to call twice)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    shutil.rmtree(folder, ignore_errors=True)


class NetronServer:
    """One netron process serving a copy of one model on its own port of 127.0.0.1."""

    def __init__(self, model_path):
        self.model_path = Path(model_path)
        self.port: Optional[int] = None
        self.folder: Optional[str] = None
        self.process: Optional[subprocess.Popen] = None
        self._at_exit = None  # the stop call registered with atexit (holds the process, not self)

    def start(self, timeout: float = 30.0) -> "NetronServer":
        """Copy the model to a temporary folder, serve it in a child process, wait until it answers."""
        if self.process is not None:
            return self
        if not self.model_path.is_file():
            raise WorkbookError(f"{self.model_path}: model file not found; export the ONNX file first "
                                "(make export) or pass the path of an existing .onnx file")
        if importlib.util.find_spec("netron") is None:
            raise WorkbookError("netron is not installed in this Python; install it with `pip install netron`")
        self.folder = tempfile.mkdtemp(prefix="netron-")
        copy = shutil.copyfile(self.model_path, Path(self.folder) / self.model_path.name)
        self.port = free_port()
        with tempfile.TemporaryFile() as log:  # netron's messages; kept outside the served folder
            self.process = subprocess.Popen([sys.executable, "-c", CHILD_SCRIPT, str(copy), str(self.port)],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            self._at_exit = functools.partial(stop_process, self.process, self.folder)
            atexit.register(self._at_exit)
            self.wait_until_serving(log, timeout)
        return self

    def wait_until_serving(self, log, timeout: float) -> None:
        """Poll the server's root page until it answers; a clear error if it dies or times out."""
        deadline = time.monotonic() + timeout
        while not http_ok(self.local_url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                lines = log.read().decode("utf-8", "replace").strip().splitlines() or ["(no output)"]
                self.stop()
                raise WorkbookError(f"netron for {self.model_path} did not answer on port {self.port} within "
                                    f"{timeout:.0f} s (its last words: {lines[-1]}); run again, or check "
                                    "that `python -c 'import netron'` works")
            time.sleep(0.1)

    @property
    def local_url(self) -> str:
        """The server's address on this machine, e.g. http://127.0.0.1:43123/ ."""
        return f"http://{HOST}:{self.port}/"

    @property
    def url(self) -> str:
        """The address a browser should open: direct, or via jupyter-server-proxy when SCN_NETRON_PROXY=1."""
        if os.environ.get("SCN_NETRON_PROXY") == "1":
            prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "").rstrip("/")
            return f"{prefix}/proxy/{self.port}/"
        return self.local_url

    def iframe(self, width="100%", height=600):
        """An IPython IFrame showing this server's page (display it, or make it a cell's last line)."""
        from IPython.display import IFrame
        return IFrame(self.url, width=width, height=height)

    def stop(self) -> None:
        """Stop the process and delete the temporary folder; calling it again does nothing."""
        if self._at_exit is not None:
            atexit.unregister(self._at_exit)
            self._at_exit()
            self._at_exit = None
        elif self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.process = None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> "NetronServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"serving at {self.url}" if self.running else "stopped"
        return f"NetronServer({str(self.model_path)!r}, {state})"


def show_netron(model_path, height: int = 600) -> NetronServer:
    """Notebook helper: serve `model_path`, display it in an IFrame, return the server (call .stop())."""
    from IPython.display import display
    warning = netron_warning()
    if warning:
        print(warning)
    server = NetronServer(model_path).start()
    display(server.iframe(height=height))
    return server


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
