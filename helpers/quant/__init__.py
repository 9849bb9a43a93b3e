"""Int8 quantization of the SCN with pytorch-quantization, as NVIDIA's reference does it.

    modules     QuantSparseConv, QuantAdd, quantize_scn: the layers with fake int8 quantizers
    fuse        fold_bn, fuse_relu: BatchNorm and ReLU merged into the conv before them
    precision   set_precision, quantizers on / off
    calibrate   amax of every quantizer from a few scans
    ranges      dynamic_ranges: the amax values the exporter writes into the graph
    cost        int8_cost: fake int8 against float on one scan
    reference   reference_run: float and fake-quant outputs, node by node, for the checks of the file
"""
