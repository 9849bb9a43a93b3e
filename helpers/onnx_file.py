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
        model = onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError and friends: not an ONNX file
        raise WorkbookError(f"{path}: not an ONNX file ({type(error).__name__}); "
                            "expected a file written by python -m helpers.export") from None
    if not model.graph.node:  # an empty file (or one of a few stray bytes) parses as an empty model
        raise WorkbookError(f"{path}: not an ONNX file (it holds no graph, {path.stat().st_size} bytes); "
                            "expected a file written by python -m helpers.export")
    return model


def attributes(node: onnx.NodeProto) -> Dict[str, Any]:
    """A node's attributes as plain values: int, float, str, lists of them (strings decoded from UTF-8)."""
    values = {}
    for attribute in node.attribute:
        try:
            value = helper.get_attribute_value(attribute)
        except ValueError:  # a damaged file: type UNDEFINED, or a number onnx does not know
            value = None
        values[attribute.name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return values
