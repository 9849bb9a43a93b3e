"""Does a saved SCN file compute what PyTorch computed? The one check behind both command lines.

    check_file(path, reference=None)   contract check; with a Reference also the float and the
                                       int8-faithful re-runs of the file, each against PyTorch
                                       (their outputs stay in Verdict.outputs)
    save_reference(folder, reference)  what export --save-tensors writes
    load_reference(folder)             and reads back (python -m helpers.verify FILE --tensors DIR)

A Reference holds the voxels, the float PyTorch output (output.npy), the fake-quant PyTorch output
(output_int8.npy) and a fingerprint of every node's output in both runs (node_stats.npz), so a
disagreement is traced to the first node where the file and PyTorch part.
"""
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from helpers.check import int8 as executor
from helpers.check.compare import compare as compare_outputs
from helpers.check.contract import check_contract
from helpers.errors import WorkbookError
from helpers.files import write_atomic
from helpers.onnx_file import load_onnx

COSINE_MIN = 0.9999  # the re-runs must point the same way as PyTorch's outputs
FLOAT_MAX_ABS = 1e-4  # and, for fp32 references, lie this close
NODE_TOLERANCE = {"float32": 1e-6, "float16": 1e-2}  # relative difference of a node's channel stats
# A reference computed on another device (a GPU export checked on a CPU) sums in another order, so a few
# int8 codes at a half step round the other way: the nodes then agree only this closely.
CROSS_DEVICE_TOLERANCE = 1e-2
FILES = ("voxels.npy", "coors.npy", "output.npy", "output_int8.npy")


@dataclass
class Reference:
    """What PyTorch computed for one input: the numbers a saved file is checked against."""
    voxels: torch.Tensor  # [N, C_in] fp16 values, the graph input
    coords: torch.Tensor  # [N, 4] int32
    output: torch.Tensor  # the float PyTorch output
    output_int8: torch.Tensor  # the fake-quant PyTorch output (equal to `output` for an fp16 graph)
    stats: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)  # "float"/"int8" -> node -> [2, C]
    dtype: str = "float32"  # what PyTorch computed in: float32 (CPU) or float16 (GPU)
    device: str = "cpu"  # where PyTorch computed it: "cpu" or "cuda"


@dataclass
class Verdict:
    code: int  # 0: every check agrees; 1: something disagrees
    lines: List[str]  # what to print, one finding per line
    figures: Dict[str, dict] = field(default_factory=dict)  # "float"/"int8" -> {"cosine", "max_abs", "node"}
    outputs: Dict[str, torch.Tensor] = field(default_factory=dict)  # "float"/"int8" -> the file's re-run output


def tensor_files(reference: Reference) -> Dict[str, bytes]:
    """File name -> bytes of a --save-tensors folder: voxels.npy (fp16), coors.npy (int32), output.npy and
    output_int8.npy (float32), node_stats.npz (every node's channel stats in both runs, and the dtype)."""
    def npy(array):
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()
    stats = io.BytesIO()
    arrays = {f"{mode}/{node}": value for mode, nodes in reference.stats.items() for node, value in nodes.items()}
    np.savez(stats, dtype=np.array(reference.dtype), device=np.array(reference.device), **arrays)
    return {"voxels.npy": npy(reference.voxels.half().cpu().numpy()),
            "coors.npy": npy(reference.coords.int().cpu().numpy()),
            "output.npy": npy(reference.output.float().cpu().numpy()),
            "output_int8.npy": npy(reference.output_int8.float().cpu().numpy()),
            "node_stats.npz": stats.getvalue()}


def save_reference(folder, reference: Reference):
    """Write the --save-tensors folder, each file atomically."""
    for name, data in tensor_files(reference).items():
        write_atomic(Path(folder) / name, data)


def load_reference(folder) -> Reference:
    """Read a --save-tensors folder; a missing or malformed file is bad input (WorkbookError)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WorkbookError(f"--tensors {folder}: not a folder; expected the folder written by "
                            "python -m helpers.export --save-tensors DIR")
    arrays = {}
    for name in FILES:
        path = folder / name
        if not path.is_file():
            hint = " (written since the int8 check exists: export again)" if name == "output_int8.npy" else ""
            raise WorkbookError(f"{path}: missing; expected {', '.join(FILES)} from python -m helpers.export "
                                f"--save-tensors{hint}")
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except Exception as err:
            raise WorkbookError(f"{path}: not a .npy array ({type(err).__name__}); export it again with "
                                "--save-tensors") from None
    voxels, coords = arrays["voxels.npy"], arrays["coors.npy"]
    if voxels.ndim != 2 or coords.ndim != 2 or coords.shape != (len(voxels), 4):
        raise WorkbookError(f"{folder}: voxels.npy {list(voxels.shape)} and coors.npy {list(coords.shape)} do not "
                            "match; expected [N, C_in] and [N, 4]; export them again with --save-tensors")
    if arrays["output.npy"].shape != arrays["output_int8.npy"].shape:
        raise WorkbookError(f"{folder}: output.npy and output_int8.npy have different shapes; export again")
    stats, dtype, device = {}, "float32", "cpu"
    if (folder / "node_stats.npz").is_file():
        with np.load(folder / "node_stats.npz", allow_pickle=False) as saved:
            for key in saved.files:
                if key == "dtype":
                    dtype = str(saved[key])
                elif key == "device":
                    device = str(saved[key])
                else:
                    mode, _, node = key.partition("/")
                    stats.setdefault(mode, {})[node] = saved[key]
    return Reference(torch.from_numpy(voxels.astype(np.float32)), torch.from_numpy(coords.astype(np.int32)),
                     torch.from_numpy(arrays["output.npy"].astype(np.float32)),
                     torch.from_numpy(arrays["output_int8.npy"].astype(np.float32)), stats, dtype, device)


def compare(reference: torch.Tensor, candidate: torch.Tensor) -> Dict[str, float]:
    """helpers.check.compare on the CPU; outputs of different shapes simply disagree."""
    if reference.shape != candidate.shape:
        return dict(max_abs=float("inf"), cosine=0.0)
    return compare_outputs(reference.detach().cpu(), candidate.detach().cpu())


def rerun(model, reference: Reference, mode: str, device: torch.device, on_node: Optional[Callable] = None) -> dict:
    """One re-run of the file ("float" or "int8") against PyTorch: figures, agreement, first differing node,
    and the re-run's output ("output"; None when the file cannot run). `on_node(mode, node, output)` also
    sees every node's output."""
    stats = {}
    record = executor.node_stats_recorder(stats)

    def each_node(node, output):
        record(node, output)
        if on_node is not None:
            on_node(mode, node, output)
    try:
        output = executor.run_file(model, reference.voxels.to(device), reference.coords.to(device),
                                   int8=(mode == "int8"), dtype=getattr(torch, reference.dtype),
                                   on_node=each_node)  # in PyTorch's own dtype
    except executor.NotExecutable as err:
        return dict(ok=False, cosine=0.0, max_abs=float("inf"), node=str(err).split(":")[0], error=str(err),
                    output=None)
    expected = reference.output if mode == "float" else reference.output_int8
    figures = compare(expected, output)
    ok = figures["cosine"] >= COSINE_MIN
    if mode == "float" and reference.dtype == "float32" and output.dtype == torch.float32:
        ok = ok and figures["max_abs"] <= FLOAT_MAX_ABS
    order = [n.name for n in model.graph.node]
    tolerance = NODE_TOLERANCE.get(reference.dtype, 1e-2)
    if device.type != reference.device:
        tolerance = max(tolerance, CROSS_DEVICE_TOLERANCE)
    first = executor.first_difference(reference.stats.get(mode, {}), stats, order, tolerance)
    if first is not None:
        ok = False
    return dict(ok=ok, node=first["node"] if first else None, detail=first,
                checked_nodes=bool(reference.stats.get(mode)), output=output, **figures)


def check_file(path, reference: Optional[Reference] = None, op_counts: Optional[dict] = None,
               device="cpu", on_node: Optional[Callable] = None) -> Verdict:
    """The contract check, and with a Reference the float and the int8-faithful re-runs of the file (float
    first); `on_node(mode, node, output)` sees every node's output of both, e.g. LayerErrors.record."""
    model = load_onnx(path)
    lines, figures, outputs = [], {}, {}
    problems = check_contract(model, op_counts=op_counts)
    lines.append(f"contract check: " + ("passed" if not problems else f"{len(problems)} problems"))
    lines += [f"  - {p}" for p in problems]
    ok = not problems
    if reference is not None:
        device = torch.device(device)
        for mode, against in (("float", "the PyTorch output"), ("int8", "the fake-quant PyTorch output")):
            r = rerun(model, reference, mode, device, on_node)
            outputs[mode] = r.pop("output")
            figures[mode] = r
            ok = ok and r["ok"]
            if "error" in r:
                lines.append(f"{mode} re-run of the file: cannot run: {r['error']} (DISAGREES)")
                continue
            line = (f"{mode} re-run of the file vs {against}: cosine {r['cosine']:.6f}, max abs {r['max_abs']:.3g} "
                    f"({'agrees' if r['ok'] else 'DISAGREES'})")
            lines.append(line)
            if r["detail"]:
                d = r["detail"]
                lines.append(f"  first node that differs: {d['node']} (channel {d['channel']}, relative "
                             f"difference {d['relative']:.3g} in its channel sums)")
            elif not r["checked_nodes"]:
                lines.append("  (no node_stats.npz: the differing node cannot be named)")
    return Verdict(0 if ok else 1, lines, figures, outputs)
