"""Writing files so that a reader never sees half of one: a temporary file in the same folder, then a rename.

    write_atomic(path, data)    bytes or text
    save_atomic(model, path)    an ONNX ModelProto, serialized deterministically (same model, same bytes)
"""
import os
import tempfile
from pathlib import Path
from typing import Union


def write_atomic(path, data: Union[bytes, str]) -> Path:
    """Write to a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def save_atomic(model, path) -> Path:
    """Save an ONNX model (anything with SerializeToString) atomically; the same model gives the same bytes."""
    return write_atomic(path, model.SerializeToString(deterministic=True))
