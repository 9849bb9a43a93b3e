"""The GPU paths: fp32/fp16 forward, the voxelizer, int8 cost, the fp16 trace and the int8 re-run on CUDA.

Skipped without a GPU (CI has none); run on a CUDA machine with `pytest -s tests/test_gpu.py`,
which also prints the figures. Real scans are read from SCN_DATA or ../shared/data when present.
"""
import copy
import os
import statistics
import time
from pathlib import Path

import pytest
import torch

from helpers.check import int8 as executor
from helpers.check.agree import check_file
from helpers.check.compare import compare
from helpers.check.contract import BEVFUSION_OPS, CENTERPOINT_OPS, check_contract
from helpers.check.rerun import run_graph
from helpers.config import get_config
from helpers.data.points import read_points
from helpers.data.scene import make_scene
from helpers.data.voxelize import voxelize
from helpers.export import main
from helpers.model import build_scn, place
from helpers.pipeline import export_scn, prepare_scn
from helpers.quant import calibrate as C
from helpers.quant.cost import int8_cost
from helpers.quant.modules import named_quantizers
from helpers.quant.precision import quantizers_disabled
from helpers.quant.reference import reference_run
from helpers.verify import main as verify
from tests.conftest import DATA

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def scans():
    """(name, points) for the full synthetic scene and the real 10-sweep scan when present."""
    found = [("synthetic full", make_scene("full"))]
    real = Path(os.environ.get("SCN_DATA", DATA)) / "nuscenes_10sweeps_points.bin"
    if real.is_file():
        found.append(("nuScenes 10 sweeps", read_points(real)))
    return found


def median_ms(fn, repeat=10):
    fn()
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def test_voxelizer_on_gpu_equals_cpu():
    cfg = get_config()
    for name, points in scans():
        v_cpu, c_cpu = voxelize(torch.from_numpy(points), cfg)
        v_gpu, c_gpu = voxelize(torch.from_numpy(points).to(CUDA), cfg)
        assert torch.equal(c_cpu, c_gpu.cpu())
        assert torch.allclose(v_cpu, v_gpu.cpu(), atol=1e-5)
        print(f"\nvoxelizer {name}: {len(points)} points -> {len(c_gpu)} voxels, GPU equals CPU")


def test_forward_fp32_and_fp16_on_gpu():
    cfg = get_config()
    cpu_model = place(build_scn(cfg), "cpu")
    for name, points in scans():
        voxels, coords = voxelize(torch.from_numpy(points).to(CUDA), cfg)
        with torch.no_grad():
            reference = cpu_model(voxels.cpu(), coords.cpu())
            model = place(build_scn(cfg), CUDA)
            out32 = model(voxels, coords)
            ms32 = median_ms(lambda: model(voxels, coords))
            model = place(model, CUDA, torch.float16)
            half = voxels.half()
            out16 = model(half, coords)
            ms16 = median_ms(lambda: model(half, coords))
        assert list(out16.shape) == [1, 256, 180, 180] and out16.dtype == torch.float16
        d32, d16 = compare(reference, out32.cpu()), compare(reference, out16.float().cpu())
        print(f"\nforward {name} ({len(voxels)} voxels): fp32 {ms32:.1f} ms (vs CPU max abs {d32['max_abs']:.2e}), "
              f"fp16 {ms16:.1f} ms (cosine vs CPU fp32 {d16['cosine']:.6f})")
        assert d32["cosine"] > 0.99999 and d16["cosine"] > 0.999


def test_gpu_histograms_equal_the_cpu_ones():
    """Counted on the second CUDA stream, zeros apart, bins merging, scans overlapping: the CPU's counts."""
    torch.manual_seed(0)
    cpu, gpu = C.HistogramCollector(), C.HistogramCollector()
    for scan in range(3):
        for scale in (1, 3, 40):  # 40: past the last bin of the first width, so bins merge mid-run
            t = torch.relu(torch.randn(200_000, 16) * scale)  # half exact zeros
            cpu.collect(t)
            gpu.collect(t.to(CUDA))
        C.flush_all([gpu], wait=False)  # as calibrate does between scans
    total = float(cpu.hist.sum())
    moved = float((gpu.hist.cpu() - cpu.hist).abs().sum())  # values on a bin edge may round the other way
    print(f"\nGPU vs CPU histogram: {total:.0f} values, {moved:.0f} in another bin, width {gpu.width:.3g}")
    assert float(gpu.hist.sum()) == total and moved <= 1e-5 * total and gpu.width == cpu.width > cpu.first_width
    for method in C.METHODS:  # the same bin, or its neighbour: the GPU sums the cumulative counts in another order
        assert abs(float(gpu.compute_amax(method)) - float(cpu.compute_amax(method))) <= 1.001 * gpu.width, method


def test_calibration_on_gpu_equals_cpu():
    """calibrate() on the GPU (counting overlapped with the next scan) and on the CPU: the same amax."""
    cfg = get_config()
    points = scans()[-1][1]
    batches = [voxelize(torch.from_numpy(p), cfg) for p in (points, make_scene("default", seed=1))]
    models = {}
    for device in ("cpu", "cuda"):
        on = [(v.to(device), c.to(device)) for v, c in batches]
        models[device] = prepare_scn(place(build_scn(cfg), device), on * 2, int8=True, progress=False)
    worst = 0.0
    for (path, kind, a), (_, _, b) in zip(named_quantizers(models["cpu"]), named_quantizers(models["cuda"])):
        relative = float(((b.amax.cpu() - a.amax).abs() / a.amax).max())
        worst = max(worst, relative)
        assert relative < 1e-3, (path, kind)
    print(f"\ncalibration GPU vs CPU: largest relative amax difference {worst:.2e}")


def test_int8_cost_and_fp16_export_on_gpu(tmp_path):
    cfg = get_config()
    for name, points in scans():
        voxels, coords = voxelize(torch.from_numpy(points).to(CUDA), cfg)
        calib = [(voxels, coords)] + [voxelize(torch.from_numpy(make_scene("full", seed=s)).to(CUDA), cfg)
                                      for s in (1, 2, 3)]
        start = time.perf_counter()
        model = prepare_scn(place(build_scn(cfg), CUDA), calib, int8=True, progress=False)
        prep_s = time.perf_counter() - start
        cost = int8_cost(model, voxels, coords)
        print(f"\nint8 {name}: fake-quant vs float cosine {cost['cosine']:.5f}, max abs {cost['max_abs']:.4f} "
              f"(prepare + calibrate on 4 scans {prep_s:.1f} s)")
        assert cost["cosine"] > 0.99
        result = export_scn(model, voxels, coords, tmp_path / "scn.onnx")
        assert result.output.dtype == torch.float16
        assert check_contract(tmp_path / "scn.onnx", op_counts=BEVFUSION_OPS) == []
        rerun = run_graph(tmp_path / "scn.onnx", voxels.half(), coords, torch.float16)
        diff = compare(result.output, rerun)
        print(f"fp16 trace {name}: {len(result.tracer.nodes)} nodes, file re-run cosine {diff['cosine']:.6f}, "
              f"max abs {diff['max_abs']:.2e}")
        assert diff["cosine"] >= 0.9999


def test_command_line_on_gpu(tmp_path, capsys):
    """python -m helpers.export --device cuda: fp16 trace, contract passed, re-run agrees (cosine >= 0.9999)."""
    args = ["--device", "cuda", "--scene", "full", "--quiet", "--save-tensors", str(tmp_path / "t")]
    assert main(args + ["--out", str(tmp_path / "scn.onnx")]) == 0
    printed = capsys.readouterr().out
    assert "on cuda" in printed and "contract check: passed" in printed
    assert "(agrees)" in printed and "DISAGREES" not in printed  # float and int8 re-runs, on the GPU in fp16
    print("\n" + "\n".join(printed.strip().splitlines()[-3:]))
    # the same file and tensors checked on the CPU in fp32, as a user without a GPU would
    assert verify([str(tmp_path / "scn.onnx"), "--tensors", str(tmp_path / "t"), "--device", "cpu"]) == 0
    print(capsys.readouterr().out.strip())


def test_int8_rerun_agrees_with_fake_quant_on_gpu():
    """The file's int8-faithful re-run on the GPU vs the fake-quant model with the file's own (fp32) scales."""
    cfg = get_config()
    for name, points in scans():
        voxels, coords = voxelize(torch.from_numpy(points).to(CUDA), cfg)
        model = prepare_scn(place(build_scn(cfg), CUDA), [(voxels, coords)], int8=True, progress=False)
        # fp32 with the fp32 amax the file's ranges hold; once the model is fp16 its amax buffers are
        # fp16-rounded, so its fake quantization would no longer use the file's scales
        reference = reference_run(model, voxels, coords)
        result = export_scn(model, voxels, coords)  # fp16 trace; the model is fp16 now
        assert reference.dtype == "float32" and reference.output_int8.dtype == torch.float32
        rerun = executor.run_file(result.model, voxels, coords, dtype=torch.float32)  # fp32 on the GPU
        gpu = compare(reference.output_int8.float(), rerun.float())
        fp16 = compare(reference.output_int8.float(), executor.run_file(result.model, voxels, coords).float())
        cpu = compare(reference.output_int8.float().cpu(),
                      executor.run_file(result.model, voxels.cpu(), coords.cpu(), dtype=torch.float32))
        verdict = check_file(result.model, reference, op_counts=BEVFUSION_OPS, device=CUDA)
        print(f"\nint8 re-run {name} ({len(voxels)} voxels) vs fake-quant fp32 GPU: executor fp16 on the GPU "
              f"cosine {fp16['cosine']:.6f} max abs {fp16['max_abs']:.3g}; GPU fp32 cosine "
              f"{gpu['cosine']:.6f} max abs {gpu['max_abs']:.3g}; CPU fp32 cosine {cpu['cosine']:.6f} "
              f"max abs {cpu['max_abs']:.3g}\n" + "\n".join(verdict.lines))
        assert gpu["cosine"] >= 0.9999 and cpu["cosine"] >= 0.9999 and verdict.code == 0


def test_centerpoint_export_on_gpu(tmp_path, capsys):
    """CenterPoint through the same pipeline on CUDA: 39 nodes, contract, float and int8 re-runs, agreement with the CPU."""
    cfg = get_config("centerpoint-0075")
    for name, points in scans():
        voxels, coords = voxelize(torch.from_numpy(points).to(CUDA), cfg)
        calib = [(voxels, coords)] + [voxelize(torch.from_numpy(make_scene("full", seed=s)).to(CUDA), cfg)
                                      for s in (1, 2, 3)]
        model = prepare_scn(place(build_scn(cfg), CUDA), calib, int8=True, progress=False)
        cost = int8_cost(model, voxels, coords)
        cpu_model = place(copy.deepcopy(model), "cpu")
        path = tmp_path / "centerpoint.onnx"
        reference = reference_run(model, voxels, coords)  # fp32, before the export turns the model fp16
        result = export_scn(model, voxels, coords, path)
        assert len(result.tracer.nodes) == 39 and list(result.output.shape) == [1, 256, 180, 180]
        assert result.output.dtype == torch.float16
        assert check_contract(path, op_counts=CENTERPOINT_OPS) == []
        diff = compare(result.output, run_graph(path, voxels.half(), coords, torch.float16))
        with torch.no_grad(), quantizers_disabled(cpu_model):
            cpu = cpu_model(voxels.half().float().cpu(), coords.cpu())
        vs_cpu = compare(cpu, result.output.float().cpu())
        verdict = check_file(path, reference, op_counts=CENTERPOINT_OPS, device=CUDA)
        with capsys.disabled():  # the figures, shown with pytest -s
            print(f"\nCenterPoint {name} ({len(voxels)} voxels): int8 fake-quant vs float cosine {cost['cosine']:.5f}; "
                  f"fp16 trace re-run cosine {diff['cosine']:.6f}; GPU fp16 vs CPU fp32 cosine {vs_cpu['cosine']:.6f}\n"
                  + "\n".join(verdict.lines))
        assert cost["cosine"] > 0.99 and diff["cosine"] >= 0.9999 and vs_cpu["cosine"] > 0.999
        assert verdict.code == 0  # float and int8-faithful re-runs of the file agree with PyTorch on the GPU
    args = ["--network", "centerpoint", "--device", "cuda", "--scene", "full", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "cli.onnx")]) == 0
    printed = capsys.readouterr().out
    assert "39 nodes" in printed and "contract check: passed" in printed
    assert "(agrees)" in printed and "DISAGREES" not in printed
