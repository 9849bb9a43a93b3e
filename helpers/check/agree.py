"""Does a saved SCN file compute what PyTorch computed? The one check behind both command lines.

    check_file(path, reference=None)   contract check; with a Reference also the float and the
                                       int8-faithful re-runs of the file, each against PyTorch
                                       (their outputs stay in Verdict.outputs)
    save_reference(folder, reference)  what export --save-tensors writes (one unit, with its manifest)
    load_reference(folder, graph)      and reads back (python -m helpers.verify FILE --tensors DIR),
                                       refusing a folder written for another graph

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
from helpers.check.tensor_folder import MANIFEST, check_manifest, manifest_bytes, read_npy, read_npz
from helpers.errors import WorkbookError
from helpers.files import write_folder_atomic
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


def tensor_files(reference: Reference, graph: Optional[bytes] = None) -> Dict[str, bytes]:
    """File name -> bytes of a --save-tensors folder: voxels.npy (fp16), coors.npy (int32), output.npy and
    output_int8.npy (float32), node_stats.npz (every node's channel stats in both runs, and the dtype), and
    with the graph's bytes manifest.json, which names that graph (verify refuses the folder beside another)."""
    def npy(array):
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()
    stats = io.BytesIO()
    arrays = {f"{mode}/{node}": value for mode, nodes in reference.stats.items() for node, value in nodes.items()}
    np.savez(stats, dtype=np.array(reference.dtype), device=np.array(reference.device), **arrays)
    files = {"voxels.npy": npy(reference.voxels.half().cpu().numpy()),
             "coors.npy": npy(reference.coords.int().cpu().numpy()),
             "output.npy": npy(reference.output.float().cpu().numpy()),
             "output_int8.npy": npy(reference.output_int8.float().cpu().numpy()),
             "node_stats.npz": stats.getvalue()}
    if graph is not None:
        files[MANIFEST] = manifest_bytes(graph, files)
    return files


def save_reference(folder, reference: Reference, graph: Optional[bytes] = None):
    """Write the --save-tensors folder (with the graph's bytes: and its manifest) as one unit."""
    write_folder_atomic(folder, tensor_files(reference, graph))


def load_reference(folder, graph=None) -> Reference:
    """Read a --save-tensors folder; a missing, malformed or (with `graph`, its path) stale file is bad input."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WorkbookError(f"--tensors {folder}: not a folder; expected the folder written by "
                            "python -m helpers.export --save-tensors DIR")
    for name in FILES:
        if not (folder / name).is_file():
            hint = " (written since the int8 check exists: export again)" if name == "output_int8.npy" else ""
            raise WorkbookError(f"{folder / name}: missing; expected {', '.join(FILES)} from python -m "
                                f"helpers.export --save-tensors{hint}")
    if graph is not None:
        check_manifest(folder, graph)
    arrays = {name: read_npy(folder / name) for name in FILES}
    voxels, coords = arrays["voxels.npy"], arrays["coors.npy"]
    if voxels.ndim != 2 or coords.ndim != 2 or coords.shape != (len(voxels), 4):
        raise WorkbookError(f"{folder}: voxels.npy {list(voxels.shape)} and coors.npy {list(coords.shape)} do not "
                            "match; expected [N, C_in] and [N, 4]; export them again with --save-tensors")
    for name, kinds in (("voxels.npy", "f"), ("coors.npy", "iu"), ("output.npy", "f"), ("output_int8.npy", "f")):
        if arrays[name].dtype.kind not in kinds:
            raise WorkbookError(f"{folder / name}: dtype {arrays[name].dtype}, expected "
                                f"{'integers' if kinds == 'iu' else 'floats'}; export it again with --save-tensors")
    if arrays["output.npy"].shape != arrays["output_int8.npy"].shape:
        raise WorkbookError(f"{folder}: output.npy and output_int8.npy have different shapes; export again")
    stats, dtype, device = {}, "float32", "cpu"
    if (folder / "node_stats.npz").is_file():
        stats, dtype, device = read_node_stats(folder / "node_stats.npz")
    return Reference(torch.from_numpy(voxels.astype(np.float32)), torch.from_numpy(coords.astype(np.int32)),
                     torch.from_numpy(arrays["output.npy"].astype(np.float32)),
                     torch.from_numpy(arrays["output_int8.npy"].astype(np.float32)), stats, dtype, device)


def read_node_stats(path: Path):
    """(stats, dtype, device) from node_stats.npz: "float"/"int8" -> node -> [2, C] floats; the run's dtype
    ("float32"/"float16") and device ("cpu"/"cuda"), each checked against what export writes."""
    stats, dtype, device = {}, "float32", "cpu"
    for key, value in read_npz(path).items():
        if key in ("dtype", "device"):
            text = str(value) if value.dtype.kind == "U" and value.ndim == 0 else None
            allowed = NODE_TOLERANCE if key == "dtype" else ("cpu", "cuda")
            if text not in allowed:
                raise WorkbookError(f"{path}: {key} is {str(value)[:40]!r}, expected one of {sorted(allowed)}; "
                                    "export it again with --save-tensors")
            dtype, device = (text, device) if key == "dtype" else (dtype, text)
            continue
        mode, _, node = key.partition("/")
        if mode not in ("float", "int8") or value.ndim != 2 or value.shape[0] != 2 or value.dtype.kind != "f":
            raise WorkbookError(f"{path}: entry {key[:40]!r} is {value.dtype} {list(value.shape)[:4]}, expected "
                                "'float/NODE' or 'int8/NODE' with [2, C] floats; export it again with --save-tensors")
        stats.setdefault(mode, {})[node] = value.astype(np.float64)
    return stats, dtype, device


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
    expected = reference.output if mode == "float" else reference.output_int8
    try:
        output = executor.run_file(model, reference.voxels.to(device), reference.coords.to(device),
                                   int8=(mode == "int8"), dtype=getattr(torch, reference.dtype),
                                   on_node=each_node, max_values=expected.numel())  # in PyTorch's own dtype
    except executor.NotExecutable as err:
        return dict(ok=False, cosine=0.0, max_abs=float("inf"), node=str(err).split(":")[0], error=str(err),
                    output=None)
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
