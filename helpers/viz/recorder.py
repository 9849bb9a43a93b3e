"""StageRecorder: what each node of a trace did and where the voxels are, kept for the pictures of notebook 03.

    recorder = StageRecorder(print_nodes=True)            # an on_node callback for export_scn
    with recorder.watch(model):                           # forward hooks on the stages: where the voxels are
        result = export_scn(model, voxels, coords, on_node=recorder)

The node callback sees each node and its output features [N, C], but not the voxel coordinates: those
live on the SparseConvTensor. So `watch` adds forward hooks (notebook 01) to the stage modules; a hook
copies a small sample to the CPU (coordinates and at most `sample` feature values) only at the six stage
ends, because every copy from a GPU waits for the GPU.
"""
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from helpers.errors import WorkbookError
from helpers.model import layout_of


@dataclass
class NodeRecord:
    """What the notebook shows of one node; plain Python values only, nothing that holds GPU memory."""
    index: int  # position in the trace, 0-based
    op: str
    name: str
    inputs: List[str]  # tensor names ("9"); weights and biases are in `initializers`
    initializers: List[str]
    outputs: List[str]
    attributes: dict
    module: str  # module path, "" for the dense tail (dense / permute / reshape)
    spatial: tuple  # (input spatial shape, output spatial shape); dense tensor shapes for the tail
    voxels: int  # rows of the output feature matrix (active sites); 0 for dense tensors


@dataclass
class StageOutput:
    """The features at the end of one stage (conv_input, encoder_layer1..4, conv_out), sampled on the CPU."""
    stage: str  # module path, e.g. "encoder_layers.encoder_layer2"
    node: Optional[str]  # the node whose output ends the stage, e.g. "conv10"
    spatial_shape: List[int]  # grid in x, y, z order, e.g. [720, 720, 21]
    voxels: int  # active sites
    xy: np.ndarray = field(repr=False)  # [voxels, 2] int32 x, y of every active site
    values: np.ndarray = field(repr=False)  # [<= sample] float32 feature values, a fixed random sample


class StageRecorder:
    """`on_node` callback: keeps a NodeRecord per node and, inside `watch(model)`, a StageOutput per stage."""

    def __init__(self, print_nodes: bool = False, sample: int = 20000):
        self.print_nodes = print_nodes
        self.sample = sample  # feature values kept per stage, for the histograms
        self.records: List[NodeRecord] = []
        self.stages: List[StageOutput] = []
        self._made_by: Dict[int, int] = {}  # id(output features) -> record index, only while watching
        self._spatial: list = []  # the current grid: Add and Relu keep the last conv's

    def __call__(self, node, output: torch.Tensor):
        if self.print_nodes:
            print(node)
        spatial = node.info.get("spatial")
        if spatial is None:  # Add, Relu: the grid of the features they read; Transpose, Reshape: dense shapes
            spatial = (self._spatial, self._spatial) if output.dim() == 2 else (self._spatial, list(output.shape))
        self._spatial = list(spatial[1])
        tensors = [i for i in node.inputs if i.isdigit()]
        self.records.append(NodeRecord(len(self.records), node.op, node.name, tensors,
                                       [i for i in node.inputs if not i.isdigit()], list(node.outputs),
                                       dict(node.attributes), node.info.get("module", ""),
                                       (list(spatial[0]), list(spatial[1])),
                                       int(output.shape[0]) if output.dim() == 2 else 0))
        self._made_by[id(output)] = len(self.records) - 1  # the tracer keeps `output` alive: ids stay unique

    @contextmanager
    def watch(self, model: torch.nn.Module):
        """Hook conv_input, each encoder layer and conv_out of a SparseEncoder for the `with` block."""
        names = ["conv_input"] + [f"encoder_layers.{n}" for n, _ in model.encoder_layers.named_children()] + \
            ["conv_out"]
        layout = layout_of(model)
        self.records, self.stages, self._made_by, self._spatial = [], [], {}, []  # a fresh recording
        handles = [model.get_submodule(n).register_forward_hook(self._stage_hook(n, layout)) for n in names]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._made_by = {}  # the ids mean nothing once the trace is gone

    def _stage_hook(self, stage: str, layout: str):
        def hook(module, inputs, out):  # out: the stage's SparseConvTensor
            index = self._made_by.get(id(out.features))
            xy = out.indices[:, 1:3] if layout == "xyz" else out.indices[:, [3, 2]]  # [N, 2] x, y on the device
            flat = torch.flatten(out.features)  # [N * C]; not .reshape(), which is traced and would become a node
            pick = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:self.sample]
            shape = list(out.spatial_shape) if layout == "xyz" else list(out.spatial_shape)[::-1]
            self.stages.append(StageOutput(stage, self.records[index].name if index is not None else None, shape,
                                           int(out.indices.shape[0]), xy.int().cpu().numpy(),
                                           flat[pick.to(flat.device)].float().cpu().numpy()))
        return hook

    def spatial_shapes(self) -> List[List[int]]:
        """The grid after each stage, x, y, z: [[1440, 1440, 41], [720, 720, 21], ...]."""
        return [s.spatial_shape for s in self._checked_stages()]

    def _checked_stages(self) -> List[StageOutput]:
        if not self.stages:
            raise WorkbookError("the recorder saw no stage outputs; trace inside `with recorder.watch(model):`")
        return self.stages


def shape_text(shape) -> str:
    return " × ".join(map(str, shape))  # [720, 720, 21] -> "720 × 720 × 21"
