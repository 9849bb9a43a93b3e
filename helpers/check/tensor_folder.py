"""The --save-tensors folder on disk: its manifest, and arrays read back from files that may be damaged.

    manifest_bytes(graph, names)      manifest.json: the sha256 of the graph the folder belongs to
    check_manifest(folder, graph)     refuse a folder written for another graph (a stale pair)
    read_npy(path)                    one .npy array: sizes checked before reading, no pickles, C order
    read_npz(path)                    every array of an .npz: the same, and the zip's declared sizes first

The folder is written as one unit with its graph (helpers.files.write_set_atomic); its manifest names the
graph's bytes: a folder beside another export's graph is refused before any number is compared.
A file is never trusted to be small because it is small on disk: the sizes it declares are checked
against its real size before anything is allocated, and a zip whose members would inflate far past
its own size is refused. Every refusal is a WorkbookError (exit 2) naming the file.
"""
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Dict, Iterable

import numpy as np

from helpers.errors import WorkbookError
from helpers.files import check_zip_inflation

MANIFEST = "manifest.json"
AGAIN = "export them again with python -m helpers.export --save-tensors"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_bytes(graph: bytes, names: Iterable[str]) -> bytes:
    """manifest.json for a folder written with the graph `graph` (its bytes): same inputs, same bytes."""
    return (json.dumps({"graph_sha256": sha256(graph), "files": sorted(names)}, indent=1) + "\n").encode()


def check_manifest(folder: Path, graph: Path) -> None:
    """Refuse (WorkbookError) a folder with no readable manifest, or whose manifest names another graph."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise WorkbookError(f"{path}: missing; expected the manifest that names the graph the folder belongs to; "
                            f"{AGAIN}")
    try:
        recorded = json.loads(path.read_bytes())["graph_sha256"]
    except (ValueError, KeyError, TypeError):
        raise WorkbookError(f"{path}: not a manifest written by python -m helpers.export; {AGAIN}") from None
    found = sha256(Path(graph).read_bytes())
    if recorded != found:
        raise WorkbookError(f"{folder}: written for another graph (manifest sha256 {str(recorded)[:12]}..., "
                            f"{graph} has {found[:12]}...): a stale pair, from two exports or an interrupted one; "
                            "verify the graph with the folder written beside it, export both again, or pass "
                            "--other-graph to compare an edited copy anyway")


HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:80]}" if text else type(err).__name__


def c_order(array: np.ndarray) -> np.ndarray:
    """The array in C (row-major) order; a Fortran-ordered file holds the same values in another order."""
    return array if array.flags.c_contiguous else array.copy(order="C")


def _check_header(path: Path, f, total: int) -> None:
    """Read an .npy header from `f` (a file of `total` bytes); refuse object arrays and data past the end."""
    try:
        read_header = HEADERS.get(np.lib.format.read_magic(f))
        if read_header is None:
            raise ValueError("an .npy version export does not write")
        shape, _, dtype = read_header(f)
    except Exception as err:  # a bad magic, a header that is not a dict, a dtype numpy does not know
        raise WorkbookError(f"{path}: not a .npy array ({first_line(err)}); {AGAIN}") from None
    if dtype.hasobject:
        raise WorkbookError(f"{path}: holds Python objects (dtype {dtype}), which are never loaded; {AGAIN}")
    size = int(np.prod(shape, dtype=object)) * dtype.itemsize  # Python ints: a huge shape cannot wrap
    if size > total - f.tell():
        raise WorkbookError(f"{path}: declares {size} bytes of data ({dtype} {list(shape)[:6]}) but holds only "
                            f"{total - f.tell()}; the file is truncated or damaged; {AGAIN}")


def read_npy(path: Path) -> np.ndarray:
    """One .npy array, in C order whatever order the file stored (a Fortran-ordered copy reads the same)."""
    path = Path(path)
    with open(path, "rb") as f:
        _check_header(path, f, path.stat().st_size)
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as err:
        raise WorkbookError(f"{path}: not a .npy array ({first_line(err)}); {AGAIN}") from None
    return c_order(array)


def read_npz(path: Path) -> Dict[str, np.ndarray]:
    """Every array of an .npz, each checked as read_npy checks one; the zip's declared sizes checked first."""
    path = Path(path)
    check_zip_inflation(path, "--tensors")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            arrays = {}
            for member in members:
                if not member.filename.endswith(".npy"):
                    raise WorkbookError(f"{path}: member {member.filename[:60]!r} is not an .npy array; {AGAIN}")
                with archive.open(member) as f:
                    _check_header(path, f, member.file_size)
                with archive.open(member) as f:
                    array = np.lib.format.read_array(f, allow_pickle=False)
                arrays[member.filename[:-4]] = c_order(array)
    except WorkbookError:
        raise
    except Exception as err:  # a truncated zip, a bad CRC, garbage after the header, a bad array
        raise WorkbookError(f"{path}: not a readable .npz ({first_line(err)}); {AGAIN}") from None
    return arrays
