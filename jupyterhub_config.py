# JupyterHub for a one-server class of this workbook: `make hub` (see docs/TRAINER.md, "A class on one server").
#
#   SCN_HUB_PASSWORD=... .venv/bin/jupyterhub -f jupyterhub_config.py
#
# Every student logs in with their own name and the class password, and gets a JupyterLab of their own (home
# folder build/hub/home/<name>/, a copy of notebooks/ made on first start). The hub listens on 127.0.0.1 only;
# put a TLS reverse proxy in front of it (or set SCN_HUB_IP) to open it to a network.
#
# What this spawner does NOT isolate: every student's server runs as the same OS user as the hub, so a student's
# code can read other students' files and signal their processes. For a real class give each student their own
# OS user (jupyterhub's LocalProcessSpawner or SystemdSpawner with the PAM authenticator) or a container spawner
# (DockerSpawner, KubeSpawner). What holds here: the hub checks who may open /user/<name>/, and a student's
# Netron view answers only the address with its own secret, through that student's own server.
import os
import shutil
import sys
from pathlib import Path

c = get_config()  # noqa: F821 (JupyterHub defines get_config when it reads this file)

ROOT = Path(__file__).resolve().parent
STATE = Path(os.environ.get("SCN_HUB_DIR", ROOT / "build" / "hub"))  # the hub's database, secrets, homes
PASSWORD = os.environ.get("SCN_HUB_PASSWORD", "")
if len(PASSWORD) < 8:
    sys.exit("jupyterhub_config.py: set SCN_HUB_PASSWORD to the class password (8 characters or more) "
             "before starting the hub, e.g. SCN_HUB_PASSWORD=$(openssl rand -hex 8)")
CHP = ROOT / "build" / "hub" / "node_modules" / ".bin" / "configurable-http-proxy"  # `make hub-deps` installs it
if not CHP.is_file() and shutil.which("configurable-http-proxy") is None:
    sys.exit(f"jupyterhub_config.py: {CHP} not found; run `make hub-deps` (npm ci of tools/hub/package-lock.json)")

# --- where the hub listens: loopback unless the trainer says otherwise
c.JupyterHub.ip = os.environ.get("SCN_HUB_IP", "127.0.0.1")
c.JupyterHub.port = int(os.environ.get("SCN_HUB_PORT", "8000"))
c.JupyterHub.hub_ip = "127.0.0.1"  # the hub's own API: for the proxy and the students' servers only
c.ConfigurableHTTPProxy.command = [str(CHP) if CHP.is_file() else "configurable-http-proxy"]
c.JupyterHub.db_url = f"sqlite:///{STATE / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(STATE / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(STATE / "jupyterhub.pid")

# --- who may log in: any name, with the class password (SCN_HUB_USERS="ana ben" lists the only names allowed).
# A shared password identifies nobody: whoever knows it can log in under ANY student's name. It is for a class
# in one room with throwaway work; for anything more use your institution's login (PAM, OAuth, LDAP).
c.JupyterHub.authenticator_class = "shared-password"  # (DummyAuthenticator's password, under its current name)
c.SharedPasswordAuthenticator.user_password = PASSWORD
users = os.environ.get("SCN_HUB_USERS", "").split()
if users:
    c.Authenticator.allowed_users = set(users)
else:
    c.Authenticator.allow_all = True

# --- each student's server: a JupyterLab of this Python, in the student's own home folder
c.JupyterHub.spawner_class = "simple"  # SimpleLocalProcessSpawner: same OS user, home build/hub/home/<name>
c.SimpleLocalProcessSpawner.home_dir_template = str(STATE / "home" / "{username}")
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.default_url = "/lab"
CPUS = float(os.environ.get("SCN_HUB_CPUS", "2"))  # cores per student (the limits below)
c.Spawner.environment = {
    "PYTHONPATH": str(ROOT),  # the notebooks import helpers/ from this checkout
    "OMP_NUM_THREADS": str(max(1, int(CPUS))),  # a kernel's threads = its cores (docs/TRAINER.md says why)
    "OMP_WAIT_POLICY": "PASSIVE",  # idle OpenMP threads sleep: students computing at once do not fight
}
c.Spawner.env_keep = ["PATH", "LANG", "LC_ALL", "VIRTUAL_ENV", "CONDA_ROOT", "CONDA_DEFAULT_ENV",
                     "JUPYTER_CONFIG_PATH", "JUPYTER_PATH"]  # the hub's environment a server keeps (jupyterhub's
                                                             # list, and where extra Jupyter extensions are set up)
if os.geteuid() == 0:
    c.Spawner.args = ["--allow-root"]  # in a container that runs as root (a real class: one OS user each)
c.Spawner.start_timeout = 120  # a first start on a loaded machine imports a lot
c.Spawner.http_timeout = 120


def copy_notebooks(spawner):
    """Give a new student the workbook's notebooks (once: their edits are kept across restarts)."""
    home = Path(spawner.home_dir)
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "notebooks").exists():
        shutil.copytree(ROOT / "notebooks", home / "notebooks")


c.Spawner.pre_spawn_hook = copy_notebooks

# --- the limits a trainer sets per student. mem_limit and cpu_limit are enforced only by spawners that run each
# server in a cgroup (SystemdSpawner, DockerSpawner, KubeSpawner); a local process spawner passes them on as
# MEM_LIMIT and CPU_LIMIT in the environment, and nothing stops a student going over them.
c.Spawner.mem_limit = os.environ.get("SCN_HUB_MEM", "4G")  # memory per student
c.Spawner.cpu_limit = CPUS  # cores per student
c.JupyterHub.concurrent_spawn_limit = 10  # how many servers may be starting at once
c.JupyterHub.active_server_limit = int(os.environ.get("SCN_HUB_MAX_SERVERS", "0"))  # 0: no limit
