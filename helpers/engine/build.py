"""Build the runner (runner.cpp + NVIDIA's open-source ONNX parser) against the user's libspconv, once.

    tools = find_toolchain()                  g++, protoc, libprotobuf, a CUDA 12 runtime, or a WorkbookError
    runner = build_runner(library, tools)     build/engine/<key>/runner, compiled only when the key is new

The key is a hash of everything that goes into the executable: the sources (ours and the parser's),
the libspconv path with its size and mtime, and the tools. The steps are the ones a Makefile would
run: protoc turns onnx-ml.proto into C++, g++ compiles it with the parser and runner.cpp, and links
libspconv.so, libcudart.so.12 and (statically, where there is a libprotobuf.a) libprotobuf. The
executable's rpath names libspconv's and libcudart's folders, so it starts without LD_LIBRARY_PATH.
"""
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from helpers import files
from helpers.engine.library import Library
from helpers.errors import WorkbookError

RUNNER_SOURCE = Path(__file__).with_name("runner.cpp")
CACHE = Path("build/engine")
APT = "apt-get install g++ protobuf-compiler libprotobuf-dev"
CUDART = "libcudart.so.12"


@dataclass
class Toolchain:
    cxx: str             # g++
    protoc: str          # the protobuf compiler; its version must match the libprotobuf headers
    protobuf: List[str]  # how to link libprotobuf: its .a file (nothing to carry), else -lprotobuf
    cuda_lib: Path       # the folder with libcudart.so.12 (runner.cpp declares the few functions it calls)


def _cuda_lib_folders():
    """Folders that may hold libcudart.so.12: pip's wheel on sys.path, then a CUDA 12 toolkit, then Debian's."""
    for entry in sys.path:  # pip install nvidia-cuda-runtime-cu12 (also with --target DIR on PYTHONPATH)
        yield Path(entry or ".") / "nvidia" / "cuda_runtime" / "lib"
    for root in [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda-12", "/usr/local/cuda"]:
        if root:
            yield Path(root) / "lib64"
    yield Path("/usr/lib") / f"{os.uname().machine}-linux-gnu"


def find_cuda_runtime() -> Path:
    """The first folder holding libcudart.so.12, the CUDA runtime libspconv is linked to."""
    for folder in _cuda_lib_folders():
        if (folder / CUDART).is_file():
            return folder
    raise WorkbookError(f"no {CUDART} (the CUDA 12 runtime libspconv is linked to) found; install it with: "
                        f"{sys.executable} -m pip install nvidia-cuda-runtime-cu12 (or set CUDA_HOME to a CUDA 12 "
                        "toolkit)")


def find_toolchain() -> Toolchain:
    """The tools the build needs, each said exactly when missing."""
    cxx, protoc = shutil.which("g++"), shutil.which("protoc")
    missing = [name for name, tool in [("g++", cxx), ("protoc", protoc)] if tool is None]
    if not Path("/usr/include/google/protobuf/message.h").is_file():
        missing.append("the libprotobuf headers")
    if missing:
        raise WorkbookError(f"building the engine runner needs {' and '.join(missing)}, not found; install them "
                            f"with: {APT}")
    static = Path("/usr/lib") / f"{os.uname().machine}-linux-gnu" / "libprotobuf.a"
    protobuf = [str(static)] if static.is_file() else ["-lprotobuf"]
    return Toolchain(cxx=cxx, protoc=protoc, protobuf=protobuf, cuda_lib=find_cuda_runtime())


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def cache_key(library: Library, tools: Toolchain) -> str:
    """A hash of what goes into the runner: sources (and this file: how they are compiled), libspconv (path,
    size, mtime) and the tools."""
    digest = hashlib.sha256()
    for source in [Path(__file__), RUNNER_SOURCE, RUNNER_SOURCE.with_name("cuda_api.h"), library.parser, library.parser.with_suffix(".hpp"), *library.protos]:
        digest.update(source.read_bytes())
    for path in [library.so_file, library.include / "spconv" / "engine.hpp", tools.cuda_lib / CUDART]:
        digest.update(_fingerprint(path).encode())
    digest.update(f"{tools.cxx} {tools.protoc} {tools.protobuf}".encode())
    return digest.hexdigest()[:16]


def _run(command: List[str], log: Path, what: str):
    """Run one build step; a failure is one line with the first error and where the full log is."""
    done = subprocess.run(command, capture_output=True, text=True)
    with open(log, "a") as f:
        f.write("$ " + " ".join(command) + "\n" + done.stdout + done.stderr)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).splitlines()
        first = next((line for line in lines if "error" in line), lines[0] if lines else "no output")
        raise WorkbookError(f"{what} failed: {first.strip()} (full log: {log}); a protoc whose version differs from "
                            f"the libprotobuf headers is a common cause: {APT}")


def compile_runner(library: Library, tools: Toolchain, folder: Path, rpath: List[str], log: Path) -> Path:
    """protoc + g++ into `folder` (the generated sources and the runner executable); commands and output in `log`."""
    generated = folder / "onnx"  # the parser includes "onnx/onnx-ml.pb.h"
    generated.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    proto_dir = library.protos[0].parent
    _run([tools.protoc, f"-I{proto_dir}", f"--cpp_out={generated}", *map(str, library.protos)], log, "protoc")
    runner = folder / "runner"
    lib_dir = library.so_file.parent
    _run([tools.cxx, "-std=c++17", "-O2", "-s", "-o", str(runner),  # -s: no debug symbols, a smaller file
          f"-I{library.include}", f"-I{library.parser.parent}", f"-I{folder}", f"-I{generated}",
          str(RUNNER_SOURCE), str(library.parser), *map(str, sorted(generated.glob("*.pb.cc"))),
          f"-L{lib_dir}", f"-l:{library.so_file.name}", f"-L{tools.cuda_lib}", f"-l:{CUDART}",
          *tools.protobuf, "-lpthread", "-Wl,-rpath," + ":".join(rpath)],
         log, "compiling the engine runner")
    return runner


def build_runner(library: Library, tools: Toolchain, cache: Path = CACHE, quiet: bool = False) -> Path:
    """The runner for this libspconv and these tools: cache/<key>/runner, built the first time only."""
    folder = cache / cache_key(library, tools)
    runner = folder / "runner"
    if runner.is_file():
        return runner
    if not quiet:
        print(f"building the engine runner in {folder} (once; about a minute)...", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / f"{folder.name}.log"  # beside the folder: kept when the build fails
    with files.temporary_folder(prefix=".building-", dir=cache) as work:
        rpath = [str(library.so_file.parent.resolve()), str(tools.cuda_lib.resolve())]
        compile_runner(library, tools, Path(work), rpath, log)
        os.replace(work, folder)  # one rename: a half-built folder is never taken for a built one
    os.replace(log, folder / "build.log")
    return runner


def build_portable(library: Library, tools: Toolchain, out_dir: Path) -> Path:
    """A runner to carry to another machine: out_dir/runner + libcudart.so.12, rpath $ORIGIN.

    libspconv.so is not copied: the machine has its own, and python -m helpers.engine --runner out_dir
    puts its folder on LD_LIBRARY_PATH."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with files.temporary_folder(prefix=".building-", dir=out_dir) as work:
        built = compile_runner(library, tools, Path(work), ["$ORIGIN"], out_dir / "build.log")
        shutil.copy2(built, out_dir / "runner")
    shutil.copy2(tools.cuda_lib / CUDART, out_dir / CUDART)
    return out_dir / "runner"


def runner_in(path) -> Optional[Path]:
    """--runner PATH: the executable, or a folder holding one (from --build-only --out-dir)."""
    path = Path(path)
    runner = path / "runner" if path.is_dir() else path
    if not (runner.is_file() and os.access(runner, os.X_OK)):
        raise WorkbookError(f"--runner {path}: no runner executable there; build one with python -m helpers.engine "
                            "--build-only --out-dir DIR --libspconv PATH")
    return runner
