"""Reading a saved ONNX graph: the model itself, and a node's attributes as plain Python values.

Every reader of saved graphs (the contract checker, the re-runner, the SVG picture) goes through
these two functions, so a missing file is the same clear error everywhere and strings are str.
"""
from pathlib import Path
from typing import Any, Dict

import onnx
from onnx import helper

from helpers.errors import WorkbookError


def load_onnx(model_or_path) -> onnx.ModelProto:
    """The ModelProto itself, or the model read from a path."""
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    path = Path(model_or_path)
    if not path.is_file():
        raise WorkbookError(f"{path}: no such file; expected an .onnx file written by python -m helpers.export")
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError and friends: not an ONNX file
        raise WorkbookError(f"{path}: not an ONNX model ({type(error).__name__}); "
                            "expected a file written by python -m helpers.export") from None


def attributes(node: onnx.NodeProto) -> Dict[str, Any]:
    """A node's attributes as plain values: int, float, str, lists of them (strings decoded from UTF-8)."""
    values = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        values[attribute.name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return values
