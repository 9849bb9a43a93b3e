"""Files in and out: path checks before any work, writes that leave nothing half-done.

    check_input(path, option)                       an existing, readable regular file
    check_output_file(path, option, inputs)         a file we may write: not a folder, not an input, folder writable
    check_output_folder(path, option, inputs)       a folder we may fill: not a file, holds no input, writable
    write_atomic(path, content)                     bytes, text or a writer into a temporary file, then one rename
    save_atomic(model, path)                        an ONNX ModelProto, serialized deterministically (same bytes)
    write_all_atomic({path: content, ...})          several files, renamed only once every one is complete
    write_folder_atomic(folder, {name: content})    a folder replaced whole: written beside it, one rename
    write_set_atomic(files, folders)                files and whole folders as one unit (a graph and its tensors)
    temporary_folder(prefix)                        a folder removed at exit, also on SIGTERM

Temporary files and folders are listed while they exist; a SIGTERM removes them before the process
ends, so a killed export leaves neither a half-written model nor a stray folder; the renames that put a
set in place finish before a SIGTERM is acted on. New files get the mode the umask allows (0644 under
the usual 022); a file that is replaced keeps its permission bits (read from the file, never through a
symlink; never setuid, setgid or sticky). A full disk is a one-line WorkbookError naming the output.
This module imports no torch, so a child process that needs only it starts in milliseconds.
"""
import atexit
import errno
import os
import secrets
import shutil
import signal
import stat
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterable, List, Mapping, Union

from helpers.errors import WorkbookError

Content = Union[bytes, str, Callable[[BinaryIO], object]]  # bytes, text (UTF-8) or a function writing to the file
Inputs = Mapping[str, Union[None, str, os.PathLike, Iterable]]  # option -> path(s), e.g. {"--points": "a.bin"}


# ----------------------------------------------------------------------------- cleanup on exit and SIGTERM
_live: Dict[Path, bool] = {}  # temporary path -> is a folder; removed when the process ends early
_previous = None  # the SIGTERM handler that was there before ours, while ours is installed
_lock = threading.Lock()


def _remove(path: Path, is_folder: bool):
    if is_folder:
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass


def _remove_all():
    for path, is_folder in list(_live.items()):
        _remove(path, is_folder)
    _live.clear()


_deferred = {"swapping": False, "signal": None}  # while the renames of a write run, a SIGTERM waits for them


def _on_sigterm(signum, frame):
    """Remove every temporary path, then end the way the process would have ended without us."""
    if _deferred["swapping"]:  # the renames of one write set: finish them first (see _swap)
        _deferred["signal"] = signum
        return
    previous = _previous
    if callable(previous):  # the program has its own handler: it decides (its exit unwinds our writes)
        return previous(signum, frame)
    _remove_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # killed by SIGTERM, as without us


def _track(path: Path, is_folder: bool):
    """List `path` for removal on SIGTERM; install the handler while anything is listed."""
    global _previous
    with _lock:
        _live[path] = is_folder
        if len(_live) == 1 and threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGTERM)
            if current is not signal.SIG_IGN and current is not _on_sigterm:  # an ignored SIGTERM stays ignored
                _previous = current
                signal.signal(signal.SIGTERM, _on_sigterm)


def _untrack(path: Path):
    global _previous
    with _lock:
        _live.pop(path, None)
        if not _live and _previous is not None and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is _on_sigterm:  # someone else's later handler stays
                signal.signal(signal.SIGTERM, _previous)
            _previous = None


atexit.register(_remove_all)  # a normal exit (or an exception at top level) removes what is left


# ----------------------------------------------------------------------------- writes
DISK_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "not permitted"}


def _disk_error(path: Path, err: OSError) -> WorkbookError:
    """A write the disk refused, as one line naming the output (nothing of it is left behind)."""
    reason = DISK_ERRORS.get(err.errno) or err.strerror or str(err) or type(err).__name__
    return WorkbookError(f"{path}: cannot be written ({reason}); nothing was written; free some space or "
                         "choose another folder")


def _temporary_name(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.{kind}")  # same folder: the rename is atomic


def _kept_mode(path: Path):
    """The permission bits a file being replaced keeps: read from the file itself, never through a symlink,
    and never setuid, setgid or sticky; None for a new file (the umask decides)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    return stat.S_IMODE(info.st_mode) & 0o777 if stat.S_ISREG(info.st_mode) else None


def _write_file(path: Path, content: Content, mode) -> None:
    """Create `path` (it must not exist), write `content`, flush it to the disk; `mode`: None or bits to set."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)  # umask applies
    with os.fdopen(fd, "wb") as f:
        if isinstance(content, str):
            f.write(content.encode("utf-8"))
        elif isinstance(content, (bytes, bytearray, memoryview)):
            f.write(content)
        else:
            content(f)
        f.flush()
        os.fsync(f.fileno())
    if mode is not None:
        os.chmod(path, mode)


def _write_temporary(path: Path, content: Content) -> Path:
    """Write `content` to a listed temporary file beside `path`, with the mode `path` will have."""
    tmp = _temporary_name(path)
    _track(tmp, False)
    try:
        _write_file(tmp, content, _kept_mode(path))
    except BaseException as err:
        _remove(tmp, False)
        _untrack(tmp)
        if isinstance(err, OSError):
            raise _disk_error(path, err) from None
        raise
    return tmp


def _write_temporary_folder(folder: Path, contents: Mapping[str, Content]) -> Path:
    """A listed temporary folder beside `folder` holding every file of `contents` (names without slashes)."""
    tmp = _temporary_name(folder)
    _track(tmp, True)
    writing = folder  # what a disk error names
    try:
        os.mkdir(tmp, 0o777)  # the umask applies, as to a folder made with mkdir
        for name, content in contents.items():
            writing = folder / name
            _write_file(tmp / name, content, _kept_mode(folder / name))
        if os.path.isdir(folder) and not os.path.islink(folder):
            os.chmod(tmp, stat.S_IMODE(os.lstat(folder).st_mode) & 0o777)  # a replaced folder keeps its mode
    except BaseException as err:
        _remove(tmp, True)
        _untrack(tmp)
        if isinstance(err, OSError):
            raise _disk_error(writing, err) from None
        raise
    return tmp


def _swap(files: List[tuple], folders: List[tuple]) -> List[Path]:
    """Rename the complete temporaries into place: folders first, then files. A SIGTERM that arrives meanwhile
    waits until the last rename is done; an error puts back what was moved. Returns the old folders to remove."""
    aside: List[tuple] = []  # (old folder moved aside, its path)
    moved: List[tuple] = []  # (new folder, its path)
    _deferred["swapping"] = True
    try:
        for tmp, folder in folders:
            if os.path.lexists(folder):
                old = _temporary_name(folder, "old")
                os.rename(folder, old)
                _track(old, True)  # removed after the swap, or by a SIGTERM that waited for it
                aside.append((old, folder))
            os.rename(tmp, folder)
            moved.append((tmp, folder))
        for tmp, path in files:
            os.replace(tmp, path)
    except BaseException:
        for tmp, folder in reversed(moved):  # undo: the new folders back to their temporary names ...
            os.rename(folder, tmp)
        for old, folder in reversed(aside):  # ... and the old ones back where they were
            os.rename(old, folder)
            _untrack(old)
        raise
    finally:
        _deferred["swapping"] = False
        pending, _deferred["signal"] = _deferred["signal"], None
        if pending is not None:
            os.kill(os.getpid(), pending)  # delivered now, after the renames (our handler cleans up)
    return [old for old, _ in aside]


def write_set_atomic(files: Mapping[Union[str, os.PathLike], Content],
                     folders: Mapping[Union[str, os.PathLike], Mapping[str, Content]] = ()) -> List[Path]:
    """Write files, and folders whose whole contents are given, as one unit: every temporary is complete
    before the first rename, and the renames run without a SIGTERM between them. A folder is written as a
    new sibling and swapped in with one rename, so it never mixes old and new files."""
    done: List[tuple] = []  # (temporary, final) files
    built: List[tuple] = []  # (temporary, final) folders
    try:
        for folder, contents in dict(folders).items():
            folder = Path(folder)
            folder.parent.mkdir(parents=True, exist_ok=True)
            built.append((_write_temporary_folder(folder, contents), folder))
        for path, content in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            done.append((_write_temporary(path, content), path))
        try:
            old_folders = _swap(done, built)
        except OSError as err:
            raise _disk_error((built or done)[0][1], err) from None
    except BaseException:
        for tmp, _ in done:
            _remove(tmp, False)
        for tmp, _ in built:
            _remove(tmp, True)
        raise
    finally:
        for tmp, _ in done + built:
            _untrack(tmp)
    for old in old_folders:
        _remove(old, True)
        _untrack(old)
    return [path for _, path in built + done]


def write_all_atomic(contents: Mapping[Union[str, os.PathLike], Content]) -> List[Path]:
    """Write every file to a temporary beside it, then rename them all: none is ever half-written."""
    return write_set_atomic(contents)


def write_folder_atomic(folder: Union[str, os.PathLike], contents: Mapping[str, Content]) -> Path:
    """Replace `folder` by one holding exactly `contents` (name -> content), in one rename."""
    return write_set_atomic({}, {folder: contents})[0]


def write_atomic(path: Union[str, os.PathLike], content: Content) -> Path:
    """Write bytes or text (or call `content(file)`) into a temporary file in the same folder, then rename it."""
    return write_all_atomic({path: content})[0]


def save_atomic(model, path) -> Path:
    """Save an ONNX model (anything with SerializeToString) atomically; the same model gives the same bytes."""
    return write_atomic(path, lambda f: f.write(model.SerializeToString(deterministic=True)))


class TemporaryFolder(os.PathLike):
    """A folder that is removed by `cleanup()`, at the end of a `with`, at exit, or on SIGTERM."""

    def __init__(self, prefix: str = "scn-", dir=None):
        import tempfile
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
        _track(self.path, True)

    def cleanup(self):
        _remove(self.path, True)
        _untrack(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, name) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"TemporaryFolder({str(self.path)!r})"

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc):
        self.cleanup()


def temporary_folder(prefix: str = "scn-", dir=None) -> TemporaryFolder:
    """A new temporary folder that cannot outlive this process (see TemporaryFolder)."""
    return TemporaryFolder(prefix, dir)


# ----------------------------------------------------------------------------- sizes a file declares
INFLATE_MAX = 4  # a zip's members may declare at most this many times the archive's size (torch and savez store)


def check_zip_inflation(path, what: str) -> None:
    """Refuse (WorkbookError) a zip file whose members declare far more bytes than the archive holds, before
    anything is read: a small file must not make the reader allocate gigabytes. Not a zip: nothing to check."""
    import zipfile
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # the reader says what is wrong with it
    if declared > INFLATE_MAX * size + (1 << 20):
        raise WorkbookError(f"{what} {path}: its zip members declare {declared} bytes in a {size}-byte file (more "
                            f"than {INFLATE_MAX}x: compressed far past what torch.save and numpy write); refusing "
                            "to inflate it; use the file as it was saved")


# ----------------------------------------------------------------------------- path checks
def as_paths(value) -> List[Path]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [Path(value)]
    return [Path(v) for v in value]


def same_file(a: Path, b: Path) -> bool:
    """True when a and b are one file (same name, a symlink or a hard link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet): compare where the names lead
        return os.path.realpath(a) == os.path.realpath(b)


def check_input(path, option: str) -> Path:
    """An existing regular file this process can read, or a WorkbookError naming the option and path."""
    path = Path(path)
    if not path.exists():
        raise WorkbookError(f"{option} {path}: file not found; expected an existing file; check the path")
    if path.is_dir():
        raise WorkbookError(f"{option} {path}: is a folder; expected a file; name a file inside it")
    if not path.is_file():
        raise WorkbookError(f"{option} {path}: is not a regular file (a pipe or a device); expected a file on disk")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise WorkbookError(f"{option} {path}: cannot be read ({err.strerror}); expected a readable file; "
                            "fix its permissions (chmod u+r) or copy it somewhere readable") from None
    return path


def _check_writable(folder: Path, option: str, path: Path):
    """The nearest existing folder above (or at) `folder` must let us create files."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise WorkbookError(f"{option} {path}: {existing} is a file, not a folder; choose a path in a folder")
    import tempfile
    try:
        with tempfile.TemporaryFile(dir=existing):  # the one honest test: create (and at once drop) a file
            pass
    except OSError as err:
        raise WorkbookError(f"{option} {path}: cannot write in {existing} ({err.strerror}); expected a writable "
                            "folder; choose another path or fix the folder's permissions") from None


def _not_an_input(path: Path, option: str, inputs: Inputs):
    for input_option, value in inputs.items():
        for source in as_paths(value):
            if same_file(path, source):
                raise WorkbookError(f"{option} {path}: is the same file as {input_option} {source}; writing it "
                                    "would destroy the input; choose another output name")


def check_output_file(path, option: str, inputs: Inputs = ()) -> Path:
    """A file we may (over)write: not a folder or device, not any input, in a writable folder. Writes nothing."""
    path = Path(path)
    inputs = dict(inputs)
    if path.is_dir():
        raise WorkbookError(f"{option} {path}: is a folder; expected a file name; use e.g. {path / 'scn.onnx'}")
    if path.exists() and not path.is_file():
        raise WorkbookError(f"{option} {path}: is not a regular file (a pipe or a device); expected a file name")
    _not_an_input(path, option, inputs)
    _check_writable(path.parent, option, path)
    return path


def check_output_folder(path, option: str, inputs: Inputs = ()) -> Path:
    """A folder we may fill: not a file, holding no input, creatable or writable. Writes nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise WorkbookError(f"{option} {path}: is a file, not a folder; expected a folder name; choose another one")
    for input_option, value in dict(inputs).items():
        for source in as_paths(value):
            if same_file(path, source) or same_file(path, source.parent):
                raise WorkbookError(f"{option} {path}: holds {input_option} {source}; files written there could "
                                    "overwrite it; choose a folder without inputs")
    _check_writable(path, option, path)
    return path
