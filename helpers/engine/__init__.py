"""NVIDIA's sparse-convolution engine (libspconv) in the loop: run an exported file in it, from Python.

    python -m helpers.engine build/scn.onnx --tensors build/tensors --libspconv PATH [--precision int8]

library.py  finds libspconv (the .so, its folder or a Lidar_AI_Solution checkout) and the GPUs it covers
gpu.py      asks nvidia-smi for the GPU and its compute capability
build.py    builds runner.cpp + NVIDIA's ONNX parser against that libspconv, once (cached in build/engine)
run.py      runs the runner as a child process and compares its output with PyTorch's
results.py  notebook 03's section: run it here, or show the saved results of a real run
cli.py      the command line (python -m helpers.engine)
"""
