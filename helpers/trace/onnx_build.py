"""Turn a finished trace into an ONNX model with onnx.helper, one call per piece.

    nodes         helper.make_node(op, inputs, outputs, name, domain, **attributes)
    initializers  helper.make_tensor(name, FLOAT16, dims, raw bytes, raw=True)
    input/output  helper.make_tensor_value_info(name, FLOAT16, shape)
    graph         helper.make_graph(nodes, "scn", inputs, outputs, initializers)
    model         helper.make_model(graph, opset_imports=[helper.make_operatorsetid(domain, version)])

Domains: the engine reads op types and attributes only. Relu is ONNX's own Relu and stays in the
default domain "" at opset 11. Every other node is not quite ONNX's: SparseConvolution and ScatterDense
are custom ops, Add carries dynamic-range attributes, Transpose/Reshape carry a `dims` attribute instead
of ONNX's `perm` / shape input. Those live in the custom domain CUSTOM_DOMAIN, so onnx.checker accepts
the file; it rejects the reference exporter's file, where everything sits in "".
"""
from typing import List

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from helpers.trace.tracer import Tracer

OPSET = 11
CUSTOM_DOMAIN = "spconv"
STANDARD_OPS = {"Relu"}  # ops exactly as ONNX defines them


def fp16_initializers(tracer: Tracer) -> List[TensorProto]:
    """Every weight and bias as FLOAT16 raw_data; one copy to the host for all of them."""
    names = list(tracer.initializers)
    flat = torch.cat([t.reshape(-1).to(torch.float16) for t in tracer.initializers.values()]).cpu().numpy()
    tensors, start = [], 0
    for name in names:
        shape = list(tracer.initializers[name].shape)
        size = int(np.prod(shape))
        raw = flat[start:start + size].tobytes()  # little-endian fp16, as ONNX stores raw_data
        tensors.append(helper.make_tensor(name, TensorProto.FLOAT16, shape, raw, raw=True))
        start += size
    return tensors


def make_scn_model(tracer: Tracer, input_channels: int, output_shape: List[int]) -> onnx.ModelProto:
    """The ModelProto of a trace: input "0" [N, C_in] fp16, last node's output fp16."""
    nodes = [helper.make_node(n.op, n.inputs, n.outputs, name=n.name,
                              domain="" if n.op in STANDARD_OPS else CUSTOM_DOMAIN, **n.attributes)
             for n in tracer.nodes]
    graph_input = helper.make_tensor_value_info("0", TensorProto.FLOAT16, ["N", input_channels])  # N voxels
    graph_output = helper.make_tensor_value_info(tracer.nodes[-1].outputs[0], TensorProto.FLOAT16, output_shape)
    graph = helper.make_graph(nodes, "scn", [graph_input], [graph_output], fp16_initializers(tracer))
    opsets = [helper.make_operatorsetid("", OPSET), helper.make_operatorsetid(CUSTOM_DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="scn-export-workbook")
    model.ir_version = 8  # readable by onnx >= 1.10 and onnxruntime >= 1.10
    return model


