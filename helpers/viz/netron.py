"""Show an ONNX graph with netron, inside a notebook, on a laptop or behind JupyterHub, leaving nothing behind.

Facts about netron (9.3.x) that shape this module:
  * `netron.serve()` runs an HTTP server in a thread of the *calling* process, and the model it
    serves is a class attribute: two models served from one process collide. So every model gets
    its own child process (`NetronServer`), which also makes stopping it simple and certain.
  * netron's `/data/<name>` route reads the served model, and any other file of the folder the model
    path names. So the child reads the model into memory and serves those bytes alone: no copy on
    disk, no folder served, nothing in /tmp that a killed kernel could leave behind.
  * netron writes the model's name into its page unescaped: the child serves the model under
    `served_name` (letters, digits, '.', '_', '-'), so a file named with markup stays text.
  * netron answers anyone who can reach its port. On a JupyterHub whose students share one machine,
    jupyter-server-proxy forwards `/user/<A>/proxy/<port>/` to ANY port of 127.0.0.1, so student A could
    open student B's view by guessing the port. So every server has a random secret (`secrets.token_urlsafe`),
    the first segment of every path it answers: `<address>/<secret>/`; anything else gets 403. The secret
    reaches the child through its environment (readable by its own OS user only), not its command line
    (which `ps` shows to every user), and the browser learns it from the address the notebook displays.
  * netron answers any `Host:` header, so a page from another site that rebinds its DNS name to
    127.0.0.1 could read the model. The child answers only loopback names (localhost, 127.0.0.1,
    [::1]), or a request that carries the X-Forwarded-Context jupyter-server-proxy sets for this port
    when the view goes through it (the proxy forwards the browser's own Host, e.g. the hub's name). A request
    forwarded for another context (another student's proxy) is refused even with a loopback Host and the secret.
  * The port is chosen free, then bound by the child: another process may take it in between. The
    child prints "serving PORT" only once its own socket listens, and start() waits for that line.
  * The page refuses to show graphs when its build is older than 180 days (it compares
    `<meta name="date">` in its index.html with the browser's clock). `netron_warning()` says so.
  * A fresh browser first shows a cookie-consent dialog; clicking "Accept" (or a cookie
    `consent=1` for the server's host) lets the graph through.
  * netron's page fetches the model relative to its own address, so it works under a path prefix:
    behind jupyter-server-proxy, `<base_url>proxy/<port>/` shows the same page.

Where the browser finds the server (`netron_url`): netron listens on 127.0.0.1 of the machine that runs
the kernel. A browser on that machine can open it directly; a browser elsewhere (JupyterHub, a remote
JupyterLab, a container) must go through the Jupyter server, with jupyter-server-proxy, at
`<base_url>proxy/<port>/` (each followed by the server's `<secret>/`). The choice, first match wins:
  1. the setting: `show_netron(..., proxy=...)`, else the environment variable SCN_NETRON_PROXY:
     "0" direct, "1" proxied (prefix found as below, else "/"), or a prefix such as "/user/alice/";
  2. JUPYTERHUB_SERVICE_PREFIX (JupyterHub sets it for every single-user server and its kernels);
  3. the Jupyter server that started this kernel (its `jpserver-<pid>.json` in the runtime folder,
     where <pid> is JPY_PARENT_PID, which jupyter_client sets, else the parent process): a base_url
     other than "/" means proxied under it; a server listening on more than the loopback interface
     (ip 0.0.0.0, a LAN address, a Unix socket) is meant for other machines: proxied under "/";
  4. otherwise (a local JupyterLab, VS Code, a script): the direct address.
"""
import atexit
import datetime
import functools
import importlib.util
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import List, Mapping, Optional

from helpers.errors import WorkbookError

MAX_BUILD_AGE_DAYS = 180  # netron's own limit, in browser.js
HOST = "127.0.0.1"
PROXY_SETTING = "SCN_NETRON_PROXY"
LOOPBACK = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}
SECRET_VARIABLE = "SCN_NETRON_SECRET"  # how the child learns its secret (environment, not argv: `ps` shows argv)

# The child process: read the model into memory, serve those bytes alone (no other file of any folder),
# answer only paths that begin with /<secret>/ (then netron sees the path without it), addressed to a loopback
# name (or forwarded by jupyter-server-proxy for this port),
# say "serving PORT" once its own socket listens, and stay alive only while the process that started us
# lives (a killed kernel takes it along).
CHILD_SCRIPT = """
import hmac, os, sys, time
model, port, name, parent, context = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
secret = os.environ.pop("SCN_NETRON_SECRET", "").encode()
if not secret:
    sys.exit("no secret in SCN_NETRON_SECRET")
if os.getppid() != parent:
    sys.exit(0)
with open(model, "rb") as f:
    data = bytearray(f.read())
import netron, netron.server
# netron reads /data/<path> from the model's folder; serve the model's bytes and nothing else
netron.server._ContentProvider.read = lambda self, path: self.data if path == self.base and self.data else None
handler = netron.server._HTTPRequestHandler
answer = handler.do_GET
def host_name(host):  # "localhost:8080" -> "localhost", "[::1]:8080" -> "[::1]"
    return host[:host.index("]") + 1] if host.startswith("[") and "]" in host else host.split(":")[0]
def checked(self):  # a page from another site that rebinds its name to 127.0.0.1 sends its own Host
    loopback = host_name((self.headers.get("Host") or "").strip().lower()) in ("localhost", "127.0.0.1", "[::1]")
    forwarded = self.headers.get("X-Forwarded-Context")  # set by jupyter-server-proxy: /user/<name>/proxy/<port>
    # forwarded: only our own Jupyter server's proxy (another student's proxy names its own context, and a hub on
    # 127.0.0.1 forwards a loopback Host); not forwarded: only loopback names
    where = forwarded == context if forwarded is not None else loopback
    first, slash, rest = self.path[1:].partition("/")  # "/<secret>/data/x.onnx" -> "<secret>", "/", "data/x.onnx"
    if hmac.compare_digest(first.encode(), secret) and slash and where and (context or forwarded is None):
        self.path = "/" + rest  # netron answers as if it were at the root
        return answer(self)
    self.send_response(403)  # (not send_error: netron's log_message cannot log its arguments)
    self.send_header("Content-Length", "0")
    self.end_headers()
handler.do_GET = checked
netron.serve(name, data=data, address=("127.0.0.1", port), browse=False)  # raises if the port is taken
print("serving", port, flush=True)  # only now is the port ours
while os.getppid() == parent:
    time.sleep(0.5)
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


def served_name(path: Path) -> str:
    """The name netron puts into its page (unescaped) and its /data/ URL: letters, digits, '.', '_' and '-'
    only, so a file named with markup or URL characters cannot reach the page as markup."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", path.name)


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


def stop_process(process: subprocess.Popen) -> None:
    """Terminate the netron child process (safe to call twice)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def jupyter_runtime_dirs(env: Mapping[str, str]) -> List[Path]:
    """Where a Jupyter server writes jpserver-<pid>.json: $JUPYTER_RUNTIME_DIR (or jupyter_core's default),
    and the folder of this kernel's connection file (`-f .../kernel-<id>.json` in its command line)."""
    found = []
    if env.get("JUPYTER_RUNTIME_DIR"):
        found.append(Path(env["JUPYTER_RUNTIME_DIR"]))
    else:
        try:
            from jupyter_core.paths import jupyter_runtime_dir
            found.append(Path(jupyter_runtime_dir()))
        except ImportError:
            pass
    argv = list(sys.argv)
    for flag, value in zip(argv, argv[1:]):
        if flag == "-f" and value.endswith(".json"):
            found.append(Path(value).parent)
    return list(dict.fromkeys(found))  # in order, once each


def jupyter_server_info(env: Optional[Mapping[str, str]] = None,
                        runtime_dirs: Optional[List[Path]] = None) -> Optional[dict]:
    """The Jupyter server that started this kernel, as it describes itself (base_url, ip, port, ...), or None.

    jupyter_client puts the server's pid in the kernel's JPY_PARENT_PID; the server writes its description to
    jpserver-<pid>.json in its runtime folder. No file with that pid: not started by a Jupyter server.
    """
    env = os.environ if env is None else env
    pid = env.get("JPY_PARENT_PID", "")
    pid = int(pid) if pid.isdigit() else os.getppid()
    for folder in (jupyter_runtime_dirs(env) if runtime_dirs is None else runtime_dirs):
        path = Path(folder) / f"jpserver-{pid}.json"
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and info.get("pid") == pid:
            return info
    return None


def normalized_prefix(prefix: str) -> str:
    """'/user/alice' -> '/user/alice/'; '' -> '/'."""
    return "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"


def proxy_prefix(setting=None, env: Optional[Mapping[str, str]] = None, server: Optional[dict] = None,
                 find_server=jupyter_server_info) -> Optional[str]:
    """The path prefix under which jupyter-server-proxy serves netron, or None for the direct address.

    `setting`: None (read SCN_NETRON_PROXY), True / False, or a prefix string. `server`: the Jupyter server's
    description (found with `find_server(env)` when not given). See the module's docstring for the rules.
    """
    env = os.environ if env is None else env
    if setting is None:
        setting = env.get(PROXY_SETTING, "").strip()
    found = []  # the server's description, looked up once and only when needed

    def the_server() -> dict:
        if not found:
            found.append(server if server is not None else (find_server(env) or {}))
        return found[0]

    if setting is True or (isinstance(setting, str) and setting.lower() in ("1", "true", "yes", "on")):
        return normalized_prefix(env.get("JUPYTERHUB_SERVICE_PREFIX") or the_server().get("base_url") or "/")
    if setting is False or (isinstance(setting, str) and setting.lower() in ("0", "false", "no", "off")):
        return None
    if isinstance(setting, str) and setting.startswith("/"):
        return normalized_prefix(setting)
    if setting not in (None, ""):
        raise WorkbookError(f"{PROXY_SETTING}={setting!r}: expected 0 (direct), 1 (through jupyter-server-proxy) "
                            "or a path prefix such as /user/alice/; unset it to let the workbook choose")
    if env.get("JUPYTERHUB_SERVICE_PREFIX"):
        return normalized_prefix(env["JUPYTERHUB_SERVICE_PREFIX"])
    info = the_server()
    if not info:
        return None
    base_url = normalized_prefix(info.get("base_url") or "/")
    if base_url != "/":
        return base_url
    host = str(info.get("hostname") or "localhost")
    if info.get("sock") or not (host in LOOPBACK or host.startswith("127.")):
        return "/"  # the server listens for other machines (or on a Unix socket behind a web server)
    return None


def netron_url(port: int, setting=None, env: Optional[Mapping[str, str]] = None,
               server: Optional[dict] = None, secret: str = "") -> str:
    """The address a browser should open for the netron server on `port`: direct, or through the Jupyter server.

    `server`: the Jupyter server's description ({} for none); None looks it up (`jupyter_server_info`).
    `secret`: the server's secret, the address's last segment (without it the server answers 403).
    """
    prefix = proxy_prefix(setting, env, server)
    base = f"http://{HOST}:{port}/" if prefix is None else f"{prefix}proxy/{port}/"
    return f"{base}{secret}/" if secret else base


class NetronServer:
    """One netron process serving one model, from memory, on its own port of 127.0.0.1.

    `proxy`: how a browser reaches it (None: decide as `netron_url` says; True / False; or a path prefix).
    """

    def __init__(self, model_path, proxy=None):
        self.model_path = Path(model_path)
        self.proxy = proxy
        self.port: Optional[int] = None
        self.secret = secrets.token_urlsafe(24)  # 32 characters of [A-Za-z0-9_-]: the address's last segment
        self.process: Optional[subprocess.Popen] = None
        self._at_exit = None  # the stop call registered with atexit (holds the process, not self)

    def start(self, timeout: float = 30.0) -> "NetronServer":
        """Serve the model in a child process (which reads it once, now), wait until it answers."""
        if self.process is not None:
            return self
        if not self.model_path.is_file():
            raise WorkbookError(f"{self.model_path}: model file not found; export the ONNX file first "
                                "(make export) or pass the path of an existing .onnx file")
        if self.model_path.stat().st_size == 0:
            raise WorkbookError(f"{self.model_path}: the file is empty; export the ONNX file again")
        if importlib.util.find_spec("netron") is None:
            raise WorkbookError("netron is not installed in this Python; install it with `pip install netron`")
        self.port = free_port()  # free now; the child's "serving PORT" line says it got it (nobody else did)
        prefix = proxy_prefix(self.proxy)
        context = f"{prefix}proxy/{self.port}" if prefix is not None else ""  # the X-Forwarded-Context it sets
        command = [sys.executable, "-c", CHILD_SCRIPT, str(self.model_path.resolve()), str(self.port),
                   served_name(self.model_path), str(os.getpid()), context]
        env = {**os.environ, SECRET_VARIABLE: self.secret}
        with tempfile.TemporaryFile(mode="a+b") as log:  # netron's messages (unlinked; only appended to)
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
            self._at_exit = functools.partial(stop_process, self.process)
            atexit.register(self._at_exit)
            self.wait_until_serving(log, timeout)
        return self

    def wait_until_serving(self, log, timeout: float) -> None:
        """Wait until the child says it listens and its page answers; a clear error if it dies or times out.
        (A page answering before the child's "serving" line is another process's, on a port taken meanwhile.)"""
        deadline = time.monotonic() + timeout
        while not (self.process.poll() is None and self.said_serving(log) and http_ok(self.local_url)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                lines = log.read().decode("utf-8", "replace").strip().splitlines() or ["(no output)"]
                self.stop()
                raise WorkbookError(f"netron for {self.model_path} did not answer on port {self.port} within "
                                    f"{timeout:.0f} s (its last words: {lines[-1]}); run again, or check "
                                    "that `python -c 'import netron'` works")
            time.sleep(0.1)

    def said_serving(self, log) -> bool:
        log.seek(0)
        return f"serving {self.port}\n".encode() in log.read()

    @property
    def local_url(self) -> str:
        """The server's address on this machine, secret included, e.g. http://127.0.0.1:43123/<secret>/ ."""
        return f"http://{HOST}:{self.port}/{self.secret}/"

    @property
    def url(self) -> str:
        """The address a browser should open: direct, or through the Jupyter server (see `netron_url`)."""
        return netron_url(self.port, self.proxy, secret=self.secret)

    def iframe(self, width="100%", height=600):
        """An IPython IFrame showing this server's page (display it, or make it a cell's last line)."""
        from IPython.display import IFrame
        return IFrame(self.url, width=width, height=height)

    def stop(self) -> None:
        """Stop the process; calling it again does nothing."""
        if self._at_exit is not None:
            atexit.unregister(self._at_exit)
            self._at_exit()
            self._at_exit = None
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


def show_netron(model_path, height: int = 600, proxy=None) -> NetronServer:
    """Notebook helper: serve `model_path`, display it in an IFrame, return the server (call .stop()).

    `proxy` as for `NetronServer`; the line printed says which address the view uses and how to change it.
    """
    from IPython.display import display
    warning = netron_warning()
    if warning:
        print(warning)
    server = NetronServer(model_path, proxy=proxy).start()
    if server.url.startswith("http"):
        print(f"Netron: {server.url} (direct; from another machine set {PROXY_SETTING}=1 before starting "
              "the kernel, or pass proxy=True)")
    else:
        print(f"Netron: {server.url} (through the Jupyter server's jupyter-server-proxy; {PROXY_SETTING}=0 or "
              "proxy=False for the direct address)")
    display(server.iframe(height=height))
    return server
