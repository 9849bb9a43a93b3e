"""Independent checks of a saved SCN graph.

    contract   check_contract: every way a file breaks the contract (docs/ONNX_CONTRACT.md)
    rerun      run_graph: the file executed with spconv, from its contents alone
    compare    compare: cosine and largest absolute difference of two outputs
"""
