"""Execute a saved SCN graph with spconv, from its nodes, attributes and initializers alone.

Its output, compared with the PyTorch network's, shows the file holds everything the network computes.
"""
import numpy as np
import spconv.pytorch as spconv
import torch
from onnx import numpy_helper

from helpers.model import place
from helpers.onnx_file import attributes, load_onnx


@torch.no_grad()
def run_graph(model, voxels: torch.Tensor, coords: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Execute a saved SCN graph with spconv: every number comes from the file, none from PyTorch modules."""
    model = load_onnx(model)
    device = voxels.device
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).astype(np.float32)) for t in model.graph.initializer}
    first = attributes(model.graph.node[0])
    features = voxels.half().to(dtype)  # the graph input is FLOAT16, whatever `dtype` computes in
    values = {"0": spconv.SparseConvTensor(features, coords.int(),
                                           list(first["input_spatial_shape"]), 1)}  # name -> tensor
    for node in model.graph.node:
        a = attributes(node)
        x = values[node.input[0]]
        if node.op_type == "SparseConvolution":
            kind = spconv.SubMConv3d if a["subm"] else spconv.SparseConv3d
            conv = kind(a["in_channels"], a["out_channels"], a["kernel_size"], stride=a["stride"],
                        padding=a["padding"], dilation=a["dilation"], bias=False, indice_key=a["rulebook"] or None)
            conv.weight.data.copy_(weights[node.input[1]])
            place(conv, device, dtype)
            y = conv(x)
            features = y.features + weights[node.input[2]].to(device, dtype)
            y = y.replace_feature(torch.relu(features) if a["activation"] == "ReLU" else features)
        elif node.op_type == "Add":
            y = x.replace_feature(x.features + values[node.input[1]].features)
        elif node.op_type == "Relu":
            y = x.replace_feature(torch.relu(x.features))
        elif node.op_type == "ScatterDense":
            y = x.dense()  # [1, C, *spatial]
            assert list(y.shape) == a["output_shape"], f"{node.name}: dense {list(y.shape)} != {a['output_shape']}"
        elif node.op_type == "Transpose":
            y = x.permute(*a["dims"])
        elif node.op_type == "Reshape":
            y = x.reshape(*a["dims"])
        values[node.output[0]] = y
    return values[model.graph.output[0].name]
