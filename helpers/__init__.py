"""scn-export-workbook: the code behind the notebooks.

    errors       WorkbookError, the one error type for input a user can fix
    files        atomic writes: a reader never sees half a file
    config       the typed SCN / voxel-grid configuration (two presets)
    model        BEVFusion's lidar SparseEncoder rebuilt with spconv 2.x
    checkpoint   loading BEVFusion / mmdet3d weights (spconv 1.x layout converted)
    data/        point-cloud files, the synthetic street scene, the voxelizer
    quant/       pytorch-quantization: quantized layers, BN folding and ReLU fusion, precision, calibration, ranges
    trace/       the registry and scoped patcher, the Tracer, the SCN handlers, the onnx.helper graph builder
    check/       the contract checker, the re-run of a saved graph, the one output comparison
    pipeline     the export as an API: prepare_scn, trace_scn, export_scn
    export       the command line: python -m helpers.export
    bench        the timing command: python -m helpers.bench
    toy          the toy model and its standard-ONNX handlers (notebook 02)
    viz/         the recorder, pictures, step-through widget, graph SVG, Netron view and show_source of the notebooks
"""
import logging
import warnings

# Two harmless messages spconv 2.3.8 triggers on every forward with torch 2.x; they would bury the lesson.
logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
