"""Tracing a network into the nodes of an ONNX graph.

    registry     Registry (which methods are patched) and tracing(), the scoped patcher
    tracer       Tracer (the state of one trace), Node, check_supported
    handlers     one handler per SCN op, writing the nodes of the contract (docs/ONNX_CONTRACT.md)
    onnx_build   onnx.helper calls that turn a trace into a ModelProto
"""
