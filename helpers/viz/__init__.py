"""Pictures and widgets of graphs and traces, for the notebooks.

    recorder    StageRecorder: an on_node callback and stage hooks that keep what the pictures need
    pictures    matplotlib figures of notebook 03 (stage chart, occupancy, histograms, BEV map)
    int8        the int8 proof of notebook 03: error per node, one int8 scale on the raw voxel columns
    stepper     the ipywidgets step-through and the HTML tables
    graph_svg   a static SVG picture of an ONNX graph
    netron      Netron inside a notebook, one child process per model
    source      show_source, used by every notebook
"""
