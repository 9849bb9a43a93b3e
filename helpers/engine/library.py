"""Find NVIDIA's libspconv from what the user points at, and read which GPUs it was built for.

    find_library(path)          -> Library   the .so, its 3DSparseConvolution folder (headers, parser sources)
    gpu_archs(so_file)          -> Archs     the sm_XX of its GPU code (SASS) and of its PTX, if any
    runs_on(archs, "9.0")       -> bool      whether that code runs on a GPU of this compute capability

`path` may be the libspconv.so itself, the 3DSparseConvolution folder (libraries/3DSparseConvolution
of NVIDIA's Lidar_AI_Solution), or a Lidar_AI_Solution checkout. The .so files there are stored with
git-lfs: a checkout without `git lfs pull` holds small text pointers instead, said here as such.

The GPU code sits in the .so as fat binaries (magic 0xBA55ED50): a header, then entries that are each
either SASS for one sm_XX (kind 2, runs on that major version, same or newer minor) or PTX (kind 1,
compiled by the driver for that sm_XX or any newer GPU).
"""
import platform
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Set

from helpers.errors import WorkbookError

LFS_POINTER = b"version https://git-lfs"
FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
SUBFOLDER = Path("libraries/3DSparseConvolution")  # inside a Lidar_AI_Solution checkout


@dataclass
class Library:
    so_file: Path       # libspconv.so
    include: Path       # libspconv/include (spconv/engine.hpp, ...)
    parser: Path        # onnx-parser.cpp (beside it: onnx-parser.hpp; in onnx/: the .proto files)
    protos: List[Path]  # onnx-ml.proto, onnx-operators-ml.proto


@dataclass
class Archs:
    sass: Set[int] = field(default_factory=set)  # e.g. {80, 86, 90}: GPU code for sm_80, sm_86, sm_90
    ptx: Set[int] = field(default_factory=set)   # PTX the driver can compile for that sm_XX and newer

    def __str__(self):
        names = [f"sm_{a}" for a in sorted(self.sass)] + [f"PTX {a}" for a in sorted(self.ptx)]
        return ", ".join(names) or "no GPU code found"


def _so_files(folder: Path) -> List[Path]:
    """libspconv.so files under libspconv/lib/<arch>_cuda12*/ (then plain <arch>/) for this CPU."""
    lib = folder / "libspconv" / "lib"
    machine = platform.machine()  # x86_64 or aarch64
    found = sorted(lib.glob(f"{machine}_cuda12*/libspconv.so"), reverse=True)  # newest CUDA 12 first
    return found + sorted(lib.glob(f"{machine}/libspconv.so"))


def _engine_folder(path: Path) -> Path:
    """The 3DSparseConvolution folder for a path given as the .so, that folder, or a checkout."""
    if path.is_file():  # .../3DSparseConvolution/libspconv/lib/<arch>/libspconv.so
        return path.parents[3]
    for inside in (SUBFOLDER, Path(SUBFOLDER.name)):  # a checkout, or the folder that holds 3DSparseConvolution
        if (path / inside).is_dir():
            return path / inside
    return path


def find_library(path) -> Library:
    """The libspconv named by `path`, with its headers and parser sources; a WorkbookError otherwise."""
    path = Path(path).expanduser()
    if not path.exists():
        raise WorkbookError(f"--libspconv {path}: does not exist; expected libspconv.so, the 3DSparseConvolution "
                            "folder or a Lidar_AI_Solution checkout (git clone "
                            "https://github.com/NVIDIA-AI-IOT/Lidar_AI_Solution, then git lfs pull)")
    folder = _engine_folder(path)
    so_files = [path] if path.is_file() else _so_files(folder)
    if not so_files:
        raise WorkbookError(f"--libspconv {path}: no libspconv/lib/{platform.machine()}_cuda12*/libspconv.so in "
                            f"{folder}; expected a 3DSparseConvolution folder with a CUDA 12 build for this CPU")
    so_file = so_files[0]
    with open(so_file, "rb") as f:
        head = f.read(len(LFS_POINTER))
    if head == LFS_POINTER:
        raise WorkbookError(f"{so_file}: a git-lfs pointer, not the library; run `git lfs install && git lfs pull` "
                            "in the Lidar_AI_Solution checkout")
    if head[:4] != b"\x7fELF":
        raise WorkbookError(f"{so_file}: not a shared library (no ELF header); expected NVIDIA's libspconv.so")
    include = folder / "libspconv" / "include"
    parsers = [p for p in (folder / "src" / "onnx-parser.cpp", folder / "libspconv" / "parser" / "onnx-parser.cpp")
               if p.is_file()]
    if not (include / "spconv" / "engine.hpp").is_file() or not parsers:
        raise WorkbookError(f"--libspconv {path}: {folder} lacks libspconv/include/spconv/engine.hpp or "
                            "src/onnx-parser.cpp; point it at a whole 3DSparseConvolution folder")
    protos = sorted((parsers[0].parent / "onnx").glob("*.proto"))
    if not protos:
        raise WorkbookError(f"{parsers[0].parent / 'onnx'}: no .proto files; expected onnx-ml.proto beside the parser")
    return Library(so_file=so_file, include=include, parser=parsers[0], protos=protos)


def gpu_archs(so_file) -> Archs:
    """The sm_XX of every fat-binary entry in the file: SASS (kind 2) and PTX (kind 1)."""
    data = Path(so_file).read_bytes()
    archs = Archs()
    start = data.find(FATBIN_MAGIC)
    while start >= 0:
        header_size, = struct.unpack_from("<H", data, start + 6)  # magic u32, version u16, header size u16
        body_size, = struct.unpack_from("<Q", data, start + 8)    # then the size of its entries, u64
        entry, end = start + header_size, start + header_size + body_size
        while entry + 32 <= min(end, len(data)):
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, entry)
            sm, = struct.unpack_from("<I", data, entry + 28)
            (archs.ptx if kind == 1 else archs.sass).add(sm)
            if entry_header == 0:  # not a fat binary after all: stop reading this one
                break
            entry += entry_header + payload
        start = data.find(FATBIN_MAGIC, start + 4)
    return archs


def runs_on(archs: Archs, compute_capability: str) -> bool:
    """SASS for sm_XY runs on X.Z with Z >= Y; PTX for sm_XY on any GPU of XY or newer."""
    major, minor = (int(x) for x in compute_capability.split("."))
    gpu = major * 10 + minor
    return (any(a // 10 == major and a % 10 <= minor for a in archs.sass)
            or any(a <= gpu for a in archs.ptx))


def check_runs_on(so_file, gpu_name: str, compute_capability: str) -> Archs:
    """The library's architectures, or a WorkbookError when none of them runs on this GPU."""
    archs = gpu_archs(so_file)
    if not runs_on(archs, compute_capability):
        sm = compute_capability.replace(".", "")
        raise WorkbookError(f"{so_file}: built for {archs}, but this GPU ({gpu_name}) is sm_{sm} (compute capability "
                            f"{compute_capability}); use a libspconv built for sm_{sm} (another libspconv/lib/ folder "
                            "or a newer Lidar_AI_Solution commit)")
    return archs
