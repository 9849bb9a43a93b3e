"""Before exporting: which modules of a network the engine's file can carry, and what to do about the rest.

    report = check_support(model, voxels, coords)   # SupportReport: one line per module of the forward
    print(report)                                   # exported / fused / passes through / unsupported + why
    report.raise_first()                            # the exporter's refusal: the first unsupported module

One forward pass (on a few thousand voxels) records which module read which features, as the fusion
pass does (helpers.quant.fuse.trace_calls). From that data flow each module gets a verdict:
    exported     a SparseConvolution, Add or Relu node of its own
    fused        a BatchNorm folded into the conv before it, a ReLU fused into that conv
    passes through   nn.Identity, containers
    unsupported  what the engine's parser cannot carry (docs/ONNX_CONTRACT.md, its onnx-parser.cpp):
                 inverse and transposed convs, groups (never read), sparse pooling (no such op), a conv
                 whose weights overflow fp16 once BN is folded in, features made outside any module
                 (a torch.cat of features: the engine has no concat), any leaf without a handler.
Modules that the forward never calls are listed too: they write nothing.
"""
import copy
from dataclasses import dataclass, field
from typing import Dict, List

import spconv.pytorch as spconv
import torch
from spconv.pytorch.conv import SparseConvolution
from spconv.pytorch.pool import SparseMaxPool
from torch import nn
from torch.overrides import TorchFunctionMode

from helpers.errors import WorkbookError
from helpers.model import ResidualAdd, place
from helpers.quant.fuse import trace_calls
from helpers.quant.modules import QuantAdd

FP16_MAX = 65504.0  # the largest finite fp16 value: the file stores every weight in fp16
CONCAT = (torch.cat, torch.concat, torch.stack, torch.hstack)


@dataclass
class ModuleSupport:
    """What the export does with one module."""
    path: str  # "conv2.0.0"
    kind: str  # "SparseConv3d"
    verdict: str  # "exported", "fused", "passes through", "not called" or "unsupported"
    note: str = ""  # what it becomes, or why it cannot and what to do

    def __str__(self):
        return f"{self.verdict:<15} {self.path or '(model)'} ({self.kind}){': ' + self.note if self.note else ''}"


@dataclass
class SupportReport:
    """Every module of a network with its verdict; `ok` when none is unsupported."""
    network: str
    modules: List[ModuleSupport] = field(default_factory=list)

    @property
    def unsupported(self) -> List[ModuleSupport]:
        return [m for m in self.modules if m.verdict == "unsupported"]

    @property
    def ok(self) -> bool:
        return not self.unsupported

    def counts(self) -> Dict[str, int]:
        found: Dict[str, int] = {}
        for m in self.modules:
            found[m.verdict] = found.get(m.verdict, 0) + 1
        return found

    def raise_first(self):
        """The exporter's refusal: one line naming the first unsupported module, why, and the fix."""
        if self.unsupported:
            first = self.unsupported[0]
            more = f" (and {len(self.unsupported) - 1} more: see check_support)" if len(self.unsupported) > 1 else ""
            raise WorkbookError(f"module '{first.path}' ({first.kind}) cannot be exported: {first.note}{more}")

    def __str__(self):
        counts = ", ".join(f"{n} {verdict}" for verdict, n in self.counts().items())
        head = f"{self.network}: {len(self.modules)} modules ({counts}): " + \
            ("every one can be exported" if self.ok else f"{len(self.unsupported)} cannot be exported")
        return "\n".join([head] + [f"  {m}" for m in self.modules])


def conv_problem(conv: SparseConvolution) -> str:
    """Why the engine cannot carry this sparse conv, with the fix; "" when it can."""
    if conv.inverse:
        return ("an inverse conv goes back to an earlier rulebook's sites (a decoder); the workbook exports encoders "
                "that end in a dense BEV map; export the network up to its last conv before .dense()")
    if conv.transposed:
        return ("the engine's parser never reads `transposed`, so it would run an ordinary conv; export the "
                "encoder part only, and up-sample after the dense BEV map")
    if conv.groups != 1:
        return (f"groups={conv.groups}: the engine's parser never reads `groups` (it would run one dense group); "
                "use groups=1")
    if conv.ndim != 3:
        return f"a {conv.ndim}-d conv; the engine runs 3-d sparse convs only; use SubMConv3d / SparseConv3d"
    return ""


def folded_peak(conv: SparseConvolution, bn: nn.BatchNorm1d) -> float:
    """The largest |weight| and |bias| of the conv once the BatchNorm after it is folded in (as fold_bn does)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)  # [C_out]
    weight = conv.weight.detach() * scale.view(-1, *[1] * (conv.weight.dim() - 1))
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean) * scale + bn.bias.detach()
    return float(max(weight.abs().max(), bias.abs().max()))


class ConcatWatch(TorchFunctionMode):
    """Inside the `with` block: id(output) -> name of every torch.cat / stack call (nothing is patched)."""

    def __init__(self):
        super().__init__()
        self.made_by: Dict[int, str] = {}
        self.keep: List[torch.Tensor] = []  # keeps the outputs alive so their ids stay unique

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in CONCAT and isinstance(out, torch.Tensor):
            self.made_by[id(out)] = f"torch.{func.__name__}"
            self.keep.append(out)
        return out


def check_support(model: nn.Module, voxels: torch.Tensor, coords: torch.Tensor) -> SupportReport:
    """Run one forward on a copy of `model` and give every module its verdict (see the module docstring)."""
    model = place(copy.deepcopy(model), voxels.device).eval()  # spconv's algorithm for the device; model untouched
    report = SupportReport(type(model).__name__)
    watch = ConcatWatch()
    try:
        with watch:
            calls = trace_calls(model, voxels, coords)
    except WorkbookError:  # already one line that says what to do
        raise
    except Exception as err:  # spconv or the network itself failed on these inputs
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WorkbookError(f"{type(model).__name__}: its forward fails on these voxels ({first}); the support "
                            "report needs one forward that runs: check the coords and the spatial shape") from None
    made_by: Dict[int, nn.Module] = {}  # id(features) -> the module that made them
    verdicts: Dict[int, ModuleSupport] = {}
    names = {id(m): path for path, m in model.named_modules()}
    uses = {}
    for c in calls:
        uses[id(c.module)] = uses.get(id(c.module), 0) + 1
    readers = {}
    for c in calls:
        for x in c.inputs:
            readers[id(x)] = readers.get(id(x), 0) + 1
    first_input = calls[0].inputs[0] if calls else None
    for c in calls:
        path, kind = names.get(id(c.module), "?"), type(c.module).__name__
        source = made_by.get(id(c.inputs[0])) if c.inputs else None
        outside = c.inputs and c.inputs[0] is not first_input and id(c.inputs[0]) not in made_by
        verdict = verdict_of(c.module, source, outside, watch.made_by.get(id(c.inputs[0])) if c.inputs else None,
                             uses[id(c.module)], readers.get(id(c.inputs[0]), 0) if c.inputs else 0, names)
        if id(c.module) not in verdicts:
            verdicts[id(c.module)] = ModuleSupport(path, kind, *verdict)
        made_by[id(c.output)] = c.module
    for path, m in model.named_modules():
        if id(m) in verdicts:
            report.modules.append(verdicts[id(m)])
        elif is_leaf(m) and not isinstance(m, nn.Identity):
            report.modules.append(ModuleSupport(path, type(m).__name__, "not called",
                                                "the forward never calls it: it writes nothing"))
    return report


def is_leaf(m: nn.Module) -> bool:
    return isinstance(m, (SparseConvolution, QuantAdd, ResidualAdd)) or not list(m.children())


def verdict_of(module, source, outside: bool, concat: str, uses: int, readers: int, names) -> tuple:
    """(verdict, note) of one module call; `source` is the module that made its input (None: the voxels)."""
    if outside:
        what = f"{concat} of features" if concat else "an op outside any module"
        return ("unsupported", f"its input is made by {what}, which the tracer never sees and the engine has no op "
                               "for; feed it one module's output (e.g. add branches with a ResidualAdd module)")
    if isinstance(module, SparseConvolution):
        problem = conv_problem(module)
        return ("unsupported", problem) if problem else ("exported", "SparseConvolution")
    if isinstance(module, SparseMaxPool):
        return ("unsupported", "sparse pooling: the engine has no pooling op; down-sample with a stride-2 "
                               "SparseConv3d instead")
    if isinstance(module, (ResidualAdd, QuantAdd)):
        return "exported", "Add"
    if isinstance(module, nn.Identity):
        return "passes through", ""
    if isinstance(module, nn.BatchNorm1d):
        if isinstance(source, SparseConvolution) and readers == 1:
            peak = folded_peak(source, module)
            if peak > FP16_MAX:
                return ("unsupported", f"folded into {names[id(source)]}, its weights reach {peak:.4g}, beyond "
                                       f"fp16's {FP16_MAX:g}; retrain or rescale (running_var near 0?)")
            return "fused", f"folded into {names[id(source)]}"
        return "unsupported", "a BatchNorm that does not follow a conv cannot be folded; put it right after one"
    if isinstance(module, nn.ReLU):
        if uses > 1:
            return "unsupported", f"one ReLU module used {uses} times; use a separate nn.ReLU for each use"
        if isinstance(source, nn.BatchNorm1d) or isinstance(source, SparseConvolution):
            return "fused", "into the conv before it (activation='ReLU')"
        return "exported", "Relu"
    return ("unsupported", f"no ONNX handler for {type(module).__name__}; write one with "
                           f"@REGISTRY.register({type(module).__name__}, 'forward') in helpers.trace.handlers")
