"""Independent checks of a saved SCN graph.

    contract   check_contract: every way a file breaks the contract (docs/ONNX_CONTRACT.md)
    rerun      run_graph: the file executed with spconv, from its contents alone
    compare    compare: cosine and largest absolute difference of two outputs
    int8       run_file: the file re-run as the engine's int8 build computes it (and in float)
    agree      check_file: contract + float and int8 re-runs against PyTorch (both command lines)
    tensor_folder  the --save-tensors folder: its manifest, and arrays read safely from damaged files
"""
