"""scn-export-workbook: the code behind the notebooks.

    config       the typed SCN / voxel-grid configuration (two presets)
    model        BEVFusion's lidar SparseEncoder rebuilt with spconv 2.x
    checkpoint   loading BEVFusion / mmdet3d weights (spconv 1.x layout converted)
    data         point-cloud files, the synthetic street scene, the voxelizer
    quantize     pytorch-quantization: quantized sparse convs, QuantAdd, BN folding, ReLU fusion, calibration
    tracing      the registry, the Tracer (trace state) and the scoped patcher `tracing(...)`
    handlers     one handler per op, writing the nodes of the ONNX contract
    onnx_build   onnx.helper calls that turn a trace into a saved model
    verify       the contract checker and the graph re-runner (spconv underneath)
    export       the pipeline and the command line: python -m helpers.export
"""
import logging
import warnings

# Two harmless messages spconv 2.3.8 triggers on every forward with torch 2.x; they would bury the lesson.
logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
