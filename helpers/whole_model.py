"""Read a checkpoint that pickles a whole model, without running any of its code.

    read_whole_model(path)   {module path: tensor} of every parameter and buffer the pickled modules hold
    load_records(path)       the unpickled tree itself: tensors, containers and inert Records

Some checkpoints are not state dicts but `torch.save(model)`: NVIDIA's `bevfusion_ptq.pth` pickles
the whole mmdet3d model, its sparse convs wrapped with pytorch-quantization quantizers that hold the
calibrated `_amax` buffers. Unpickling such a file the ordinary way imports every class it names
(mmdet3d, its CUDA extensions, ...) and calls whatever the pickle asks for: a pickle is a program.
`torch.load(weights_only=True)` refuses it. Here it is read with a restricted unpickler:

- `find_class` returns the real thing only for the allow-list below: containers and the functions torch
  pickles tensors with (each checked to be given no Record). Any other name, `os.system` as much as
  `mmdet3d.models.BEVFusion`, becomes a Record class: calling it, or unpickling an object of it, makes an
  inert Record holding the arguments and state it would have been given. No class is imported, no
  `__init__`, `__reduce__` or `__setstate__` of the file's classes runs.
- torch's zip format is read by torch.load itself (its storages, its map_location), with this module's
  unpickler plugged in as `pickle_module`.
An nn.Module pickles as a Record whose state is its `__dict__`: `_parameters`, `_buffers` and `_modules`;
walking `_modules` gives every tensor its module path, as `state_dict()` would have named it.
"""
import collections
import pickle
import types
from pathlib import Path
from typing import Any, Dict

import torch
import torch._utils

from helpers.errors import WorkbookError


class Record:
    """An object the pickle described but that was never built: its class name, arguments and state."""
    qualname = "?"  # "module.Class", set on each Record class made by find_class

    def __new__(cls, *args, **kwargs):
        record = super().__new__(cls)
        record.args, record.kwargs = args, kwargs  # what the constructor (or __reduce__'s callable) would get
        record.state, record.items, record.entries = None, [], {}
        return record

    def __setstate__(self, state):  # pickle's BUILD: keep the state, call nothing
        self.state = state

    def append(self, item):  # pickle's APPEND(S) on a list-like object
        self.items.append(item)

    def extend(self, items):
        self.items.extend(items)

    def __setitem__(self, key, value):  # pickle's SETITEM(S) on a dict-like object
        self.entries[key] = value

    def __repr__(self):
        return f"<Record {self.qualname}>"


def record_class(module: str, name: str) -> type:
    """A fresh Record subclass standing for `module.name`; nothing is imported."""
    return type(name, (Record,), {"qualname": f"{module}.{name}", "__module__": "helpers.whole_model.records"})


def holds_record(value) -> bool:
    """True when `value` is a Record or a tuple / list / dict that holds one."""
    if isinstance(value, Record):
        return True
    if isinstance(value, (tuple, list)):
        return any(holds_record(v) for v in value)
    if isinstance(value, dict):
        return any(holds_record(k) or holds_record(v) for k, v in value.items())
    return False


def checked(function, qualname: str):
    """`function`, refusing any call whose arguments carry a Record (a code path smuggled into a tensor)."""
    def call(*args, **kwargs):
        if holds_record(args) or holds_record(kwargs):
            raise WorkbookError(f"{qualname} was given an object of a class that is not allowed; refused")
        return function(*args, **kwargs)
    return call


ALLOWED = {  # (module, name) -> what find_class returns
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor_v2"): checked(torch._utils._rebuild_tensor_v2, "torch._utils._rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"): checked(torch._utils._rebuild_tensor, "torch._utils._rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"): checked(torch._utils._rebuild_parameter, "torch._utils._rebuild_parameter"),
}
DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name), torch.dtype)}  # torch.float32, ...


class Unpickler(pickle.Unpickler):
    """A pickle.Unpickler that builds tensors, containers and Records, and never imports a class."""

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        if module == "torch" and name in DTYPES:
            return getattr(torch, name)  # a dtype is a value, not code
        return record_class(module, name)


def load(file, **kwargs):
    """pickle.load with this module's Unpickler (torch.load calls it for the header of old-format files)."""
    return Unpickler(file, **kwargs).load()


RESTRICTED = types.SimpleNamespace(Unpickler=Unpickler, load=load, __name__="helpers.whole_model")


def load_records(path) -> Any:
    """The unpickled tree of a torch.save file: tensors, containers and inert Records; any error is one line."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", pickle_module=RESTRICTED, weights_only=False)
    except OSError as err:
        raise WorkbookError(f"{path}: cannot be read ({err.strerror}); expected a readable .pth file") from None
    except WorkbookError as err:
        raise WorkbookError(f"{path}: {err}") from None
    except Exception as err:  # a truncated zip, a bad opcode, a tensor built from a Record, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WorkbookError(f"{path}: not a checkpoint that can be read without running it: {first}") from None


def module_tensors(record: Record, prefix: str = "") -> Dict[str, torch.Tensor]:
    """{path: tensor} of a pickled nn.Module's parameters and buffers and those of its sub-modules."""
    state = record.state if isinstance(record.state, dict) else {}
    found = {}
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if isinstance(value, torch.Tensor):
                found[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, Record):
            found.update(module_tensors(child, f"{prefix}{name}."))
    return found


def find_module(tree: Any) -> Record:
    """The pickled nn.Module in the tree: the top object, or one under 'model' / 'module' in a dict."""
    if isinstance(tree, Record) and isinstance(tree.state, dict) and "_modules" in tree.state:
        return tree
    if isinstance(tree, dict):
        for key in ("model", "module", "state_dict"):
            if key in tree:
                return find_module(tree[key])
    raise WorkbookError(f"expected a pickled nn.Module (an object with _modules), found {type(tree).__name__}")


def read_whole_model(path) -> Dict[str, torch.Tensor]:
    """Every parameter and buffer of a pickled whole model, by module path, read without running it."""
    try:
        tensors = module_tensors(find_module(load_records(path)))
    except WorkbookError as err:
        message = str(err)
        raise WorkbookError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    if not tensors:
        raise WorkbookError(f"{path}: the pickled model holds no tensors; expected a trained model")
    return tensors
