"""Run every hostile case of docs/HOSTILE.md against a fresh export, each in its own process, and print a table.

    PYTHONPATH=. .venv/bin/python tools/adversarial.py            # the markdown table on stdout
    PYTHONPATH=. .venv/bin/python tools/adversarial.py -k npz     # only the cases whose name holds "npz"

One small export (the small synthetic scene on the 1024 grid, int8, CPU) is made first; each case runs
on its own copy of it in a temporary folder. Per case the table gives the exit code, the first line of
what was said (the error line, else the first problem or disagreement of the verdict), the child's peak
resident memory (ru_maxrss of RUSAGE_CHILDREN, read by a small process between this one and the child,
so this process's own size does not count) and what changed on disk in the case's folder.
Expected: exit 0 or 1 with a verdict, or 2 with one line; never 3, never a traceback.
"""
import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests import tamper  # noqa: E402  (the damaged-file helpers the tests use)

EXPORT = ["--scene", "small", "--grid", "bevfusion-01", "--calibrate", "1", "--quiet", "--device", "cpu"]
MEASURE = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
print("PEAK_MB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "EXIT", code, flush=True)
"""
LIMIT = """
import resource, runpy, sys
limit = 6 * 2**30  # address space: a runaway allocation fails in the child instead of swamping the machine
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


@dataclass
class Case:
    name: str
    prepare: Callable[[Path], List[str]]  # the case's folder (a copy of the export) -> the child's command
    then: Optional[Callable[[Path], List[str]]] = None  # a command run afterwards: what a reader then finds


# ----------------------------------------------------------------------------- what the cases run
def module(name: str, *args) -> List[str]:
    """`python -m name args` under a 6 GiB address-space limit."""
    return [sys.executable, "-c", LIMIT, name, *map(str, args)]


def script(code: str, *args) -> List[str]:
    return [sys.executable, "-c", code, *map(str, args)]


def verify_damaged(damage: str) -> Callable[[Path], List[str]]:
    def prepare(folder: Path) -> List[str]:
        damaged, _, _ = tamper.DAMAGES[damage]
        onnx.save(damaged(onnx.load(str(folder / "scn.onnx"))), str(folder / "bad.onnx"))
        return module("helpers.verify", folder / "bad.onnx", "--tensors", folder / "t", "--other-graph")
    return prepare


def verify_stats(how: str) -> Callable[[Path], List[str]]:
    def prepare(folder: Path) -> List[str]:
        stats = folder / "t" / "node_stats.npz"
        if how == "truncated":
            stats.write_bytes(stats.read_bytes()[:5000])
        elif how == "garbage after the zip header":
            stats.write_bytes(stats.read_bytes()[:40] + bytes(range(256)) * 200)
        elif how == "object array":
            buffer = io.BytesIO()
            np.save(buffer, np.array([1, "x", None], dtype=object), allow_pickle=True)
            with zipfile.ZipFile(stats, "w") as archive:
                archive.writestr("float/conv0.npy", buffer.getvalue())
        elif how.startswith("dtype"):
            arrays = dict(np.load(stats))
            arrays["dtype"] = np.array(how.split()[1])
            np.savez(stats, **arrays)
        elif how == "zip bomb":
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                          "shape": (2, 2 ** 27)})
            deflated_zeros(stats, "float/conv0.npy", 2 << 30, header.getvalue())
        return module("helpers.verify", folder / "scn.onnx", "--tensors", folder / "t")
    return prepare


def deflated_zeros(path: Path, member: str, size: int, prefix: bytes = b""):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(member, "w", force_zip64=True) as f:
            f.write(prefix)
            for _ in range(size >> 24):
                f.write(bytes(1 << 24))


def fortran(folder: Path) -> List[str]:
    for name in ("coors.npy", "voxels.npy"):
        np.save(folder / "t" / name, np.asfortranarray(np.load(folder / "t" / name)))
    return module("helpers.verify", folder / "scn.onnx", "--tensors", folder / "t")


def stale_pair(folder: Path) -> List[str]:
    damaged, _, _ = tamper.DAMAGES["groups 2"]
    onnx.save(damaged(onnx.load(str(folder / "scn.onnx"))), str(folder / "scn.onnx"))
    return module("helpers.verify", folder / "scn.onnx", "--tensors", folder / "t")


def empty_onnx(folder: Path) -> List[str]:
    (folder / "empty.onnx").write_bytes(b"")
    return module("helpers.verify", folder / "empty.onnx")


def wider_grid(factor: int) -> Callable[[Path], List[str]]:
    def prepare(folder: Path) -> List[str]:
        model = onnx.load(str(folder / "scn.onnx"))
        widen = {("SparseConvolution", "input_spatial_shape"): (0, 1),
                 ("SparseConvolution", "output_spatial_shape"): (0, 1),
                 ("ScatterDense", "input_spatial_shape"): (0, 1), ("ScatterDense", "output_shape"): (2, 3),
                 ("Reshape", "dims"): (2, 3)}
        for node in model.graph.node:
            for a in node.attribute:
                for axis in widen.get((node.op_type, a.name), ()):
                    a.ints[axis] *= factor
        onnx.save(model, str(folder / "wide.onnx"))
        return module("helpers.verify", folder / "wide.onnx", "--tensors", folder / "t", "--other-graph")
    return prepare


def export_again(*extra) -> List[str]:
    return list(EXPORT) + ["--precision", "fp16", "--layout", "zyx"] + list(extra)


FULL_DISK = """
import errno, os, sys
from helpers import files
from helpers.export import main
def full(path, content, mode):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
files._write_file = full
sys.exit(main(sys.argv[1:]))
"""
WARNING_THEN_ERROR = """
import sys, warnings
import helpers.export as cli
from helpers.errors import WorkbookError
def noisy(args):
    warnings.warn("a library warns\\nover two lines", UserWarning)
    raise WorkbookError("--out x.onnx: a bad value; expected a good one")
cli.check_args = noisy
sys.exit(cli.main(sys.argv[1:]))
"""
KILLED = """
import os, signal, sys
from helpers import files
from helpers.export import main
tensors, how = sys.argv[1], sys.argv[2]
rename = os.rename
def killed_on_the_way(source, target):
    rename(source, target)
    if str(target) == tensors:  # the new folder is in place; the graph's rename comes next
        os.kill(os.getpid(), signal.SIGTERM if how == "term" else signal.SIGKILL)
files.os.rename = killed_on_the_way
sys.exit(main(sys.argv[3:]))
"""


def full_disk(folder: Path) -> List[str]:
    return script(FULL_DISK, *export_again("--out", folder / "scn.onnx", "--save-tensors", folder / "t"))


def warning_then_error(folder: Path) -> List[str]:
    return script(WARNING_THEN_ERROR, "--out", folder / "x.onnx")


def folder_in_tensors(folder: Path) -> List[str]:
    (folder / "t" / "output_int8.npy").unlink()
    (folder / "t" / "output_int8.npy").mkdir()
    return module("helpers.export", *export_again("--out", folder / "scn.onnx", "--save-tensors", folder / "t"))


def killed(how: str) -> Callable[[Path], List[str]]:
    def prepare(folder: Path) -> List[str]:
        return script(KILLED, folder / "t", how, *export_again("--out", folder / "scn.onnx",
                                                               "--save-tensors", folder / "t"))
    return prepare


def setuid_link(folder: Path) -> List[str]:
    target = folder / "setuid-program"
    target.write_bytes(b"#!/bin/sh\n")
    target.chmod(0o4755)
    (folder / "link.onnx").symlink_to(target)
    return module("helpers.export", *export_again("--out", folder / "link.onnx"))


def verify_pair(folder: Path) -> List[str]:
    return module("helpers.verify", folder / "scn.onnx", "--tensors", folder / "t")


def modes(folder: Path) -> List[str]:
    return script("import os, sys; print('error: link.onnx is now mode', oct(os.lstat(sys.argv[1]).st_mode), "
                  "'; its old target', oct(os.stat(sys.argv[2]).st_mode), file=sys.stderr)",
                  folder / "link.onnx", folder / "setuid-program")


def checkpoint_bomb(folder: Path) -> List[str]:
    deflated_zeros(folder / "bomb.pth", "archive/data/0", 2 << 30)
    return module("helpers.export", *export_again("--checkpoint", folder / "bomb.pth", "--out", folder / "b.onnx"))


NETRON = """
import sys, urllib.request, urllib.error, shutil
from pathlib import Path
from helpers.viz.netron import NetronServer
model = Path(sys.argv[1]).with_name('a"><img src=x onerror=alert(1)>.onnx')
shutil.copy(sys.argv[1], model)
with NetronServer(model, proxy=False) as server:
    page = urllib.request.urlopen(server.local_url).read().decode()
    request = urllib.request.Request(server.local_url, headers={"Host": f"attacker.example:{server.port}"})
    try:
        status = urllib.request.urlopen(request).status
    except urllib.error.HTTPError as err:
        status = err.code
model.unlink()
markup = "<img src=x onerror" in page
print(f"markup in the page: {markup}; a foreign Host is answered with {status}", file=sys.stderr)
sys.exit(1 if markup or status == 200 else 0)
"""
PATCHER = """
import os, signal, sys, threading
from helpers.trace.registry import Registry, tracing
from helpers.trace.tracer import Tracer
class Interrupting(type):
    armed = False
    def __setattr__(cls, name, value):
        super().__setattr__(name, value)
        if Interrupting.armed and not hasattr(value, "patched_by"):
            Interrupting.armed = False
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after the first original is back
class Owner(metaclass=Interrupting):
    def first(self): return 1
    def second(self): return 2
seen = []
registry = Registry()
registry.register(Owner, "first")(lambda tracer, output, self: seen.append(threading.current_thread().name))
registry.register(Owner, "second")(lambda tracer, output, self: None)
try:
    with tracing(Tracer(), registry):
        worker = threading.Thread(target=lambda: Owner().first(), name="worker")
        worker.start(); worker.join()
        Interrupting.armed = True
except KeyboardInterrupt:
    pass
left = [name for name in ("first", "second") if hasattr(Owner.__dict__[name], "patched_by")]
print(f"patched after Ctrl-C in the revert: {left}; recorded threads: {seen}", file=sys.stderr)
sys.exit(1 if left or seen else 0)
"""

CASES = [Case(f"graph: {name}", verify_damaged(name)) for name in tamper.DAMAGES] + [
    Case("graph: empty .onnx", empty_onnx),
    Case("graph: grid attributes 6x wider", wider_grid(6)),
    Case("graph: grid attributes 24x wider", wider_grid(24)),
    Case("tensors: stale pair (graph edited after export)", stale_pair),
    Case("tensors: Fortran-ordered coors.npy and voxels.npy", fortran),
] + [Case(f"node_stats.npz: {how}", verify_stats(how)) for how in
     ("truncated", "garbage after the zip header", "object array", "dtype bogus", "dtype load", "zip bomb")] + [
    Case("export: full disk (ENOSPC on every write)", full_disk),
    Case("export: a warning before a one-line error", warning_then_error),
    Case("export: a folder named output_int8.npy in --save-tensors", folder_in_tensors),
    Case("export: SIGTERM between the folder and the graph renames", killed("term"), verify_pair),
    Case("export: SIGKILL between the folder and the graph renames", killed("kill"), verify_pair),
    Case("export: --out a symlink to a setuid file", setuid_link, modes),
    Case("export: 2 GiB checkpoint zip bomb", checkpoint_bomb),
    Case("netron: markup file name, foreign Host header", lambda folder: script(NETRON, folder / "scn.onnx")),
    Case("patcher: Ctrl-C during the revert, a call from another thread", lambda folder: script(PATCHER)),
]


# ----------------------------------------------------------------------------- running and reporting
def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and
                                         not p.is_symlink() else "", oct(p.lstat().st_mode))
            for p in sorted(folder.rglob("*"))}


def disk_changes(before: dict, after: dict) -> str:
    changed = sorted(k for k in before if k in after and before[k] != after[k])
    new, gone = sorted(set(after) - set(before)), sorted(set(before) - set(after))
    new = [k for k in new if str(Path(k).parent) not in new]  # a new folder once, not each file in it
    parts = [f"changed {', '.join(changed)}" if changed else "", f"new {', '.join(new)}" if new else "",
             f"removed {', '.join(gone)}" if gone else ""]
    return "; ".join(p for p in parts if p) or "unchanged"


def first_line(out: str, err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")] or \
            [line for line in err.splitlines() if line and not line.startswith("warning:")] or \
            [line.strip() for line in out.splitlines() if line.startswith("  - ") or "DISAGREES" in line] or \
            [line for line in out.splitlines() if line.strip()][-1:] or [""]
    line = lines[0]
    return (line[:150] + "...") if len(line) > 150 else line


def run_case(case: Case, export_folder: Path, folder: Path) -> str:
    shutil.copytree(export_folder, folder)
    command = case.prepare(folder)
    before = snapshot(folder)
    done = subprocess.run([sys.executable, "-c", MEASURE, *command], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    out, report = done.stdout.split("PEAK_MB")
    peak, code = float(report.split()[0]), int(report.split()[2])
    code = code if code >= 0 else f"killed by signal {-code}"
    traceback = " (TRACEBACK)" if "Traceback" in done.stderr else ""
    message = first_line(out, done.stderr)
    disk = disk_changes(before, snapshot(folder))
    if case.then is not None:  # what a reader finds afterwards (not measured)
        after = subprocess.run(case.then(folder), cwd=ROOT, capture_output=True, text=True, timeout=900,
                               env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
        message = f"{message} -- then: exit {after.returncode}, {first_line(after.stdout, after.stderr)}"
    message, disk = (text.replace(str(folder), "DIR").replace("|", "\\|") for text in (message, disk))
    return f"| {case.name} | {code}{traceback} | {message} | {peak:.0f} | {disk} |"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-k", default="", help="run only the cases whose name holds this text")
    args = p.parse_args(argv)
    cases = [c for c in CASES if args.k.lower() in c.name.lower()]
    with tempfile.TemporaryDirectory(prefix="adversarial-") as work:
        work = Path(work)
        export = work / "export"
        subprocess.run([sys.executable, "-m", "helpers.export", *EXPORT, "--out", str(export / "scn.onnx"),
                        "--save-tensors", str(export / "t")], cwd=ROOT, check=True, capture_output=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
        print("| case | exit | first line of the message | peak MiB | on disk |")
        print("|---|---|---|---|---|")
        for index, case in enumerate(cases):
            print(run_case(case, export, work / f"case{index:02d}"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
