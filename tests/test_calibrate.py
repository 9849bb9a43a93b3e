"""Calibration (helpers.quant.calibrate): the amax rules equal pytorch-quantization 2.1.3's, the amax
agree with the library's own calibrators on the real scans within 1 %, the histogram's size does not
depend on the data, and collecting never reads a value back to the host."""
import copy
import math
import re

import numpy as np
import pytest
import torch
from pytorch_quantization import calib
from pytorch_quantization.calib import histogram as library

from helpers.config import get_config
from helpers.errors import WorkbookError
from helpers.model import build_scn, place
from helpers.quant import calibrate as C
from helpers.quant.fuse import fuse
from helpers.quant.modules import named_quantizers, quantize_scn
from helpers.quant.precision import set_precision
from tests.conftest import random_voxels, real_file


@pytest.fixture
def library_mse_on_cpu(monkeypatch):
    """The library's mse rule moves its histogram with .cuda(); here (this test only) .cuda() is a no-op."""
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)


def collector_of(hist: np.ndarray, width: float) -> C.HistogramCollector:
    """A collector holding a given histogram (bins of `width`, never merged)."""
    c = C.HistogramCollector(max(C.FIRST_BINS, 1 << (len(hist) - 1).bit_length()))
    c.hist = torch.zeros(c.bins, dtype=torch.float64)
    c.hist[:len(hist)] = torch.from_numpy(hist.astype(np.float64))
    c.width = c.first_width = float(width)
    c.max = float(width) * len(hist)
    return c


def test_rules_equal_the_library_on_the_same_histogram(library_mse_on_cpu):
    rng = np.random.default_rng(0)
    for trial in range(3):
        values = np.abs(rng.standard_t(3 + trial, size=100_000)) * (0.1 + 10 * rng.random())
        values[:20_000 * trial] = 0  # a spike at zero, as after a ReLU
        hist, edges = np.histogram(values, bins=700, range=(0, values.max()))  # small: the library loops in Python
        ours = collector_of(hist, edges[1] - edges[0])
        for method in C.METHODS:
            theirs = {"mse": lambda: library._compute_amax_mse(hist.copy(), edges, 8, False),
                      "entropy": lambda: library._compute_amax_entropy(hist.copy(), edges, 8, False),
                      "percentile": lambda: library._compute_amax_percentile(hist.copy(), edges, 99.99)}[method]()
            assert float(ours.compute_amax(method)) == pytest.approx(float(theirs), rel=1e-6), (trial, method)


@pytest.fixture(scope="module")
def real_scans():
    from helpers.data.points import read_points
    from helpers.data.voxelize import voxelize
    cfg = get_config()  # BEVFusion's 1440 grid: the real scans' grid
    points = read_points(real_file("nuscenes_10sweeps_points.bin"))
    voxels = torch.from_numpy(np.load(real_file("bevfusion_voxels_17748x5_fp16.npy"))).float()
    coords = torch.from_numpy(np.load(real_file("bevfusion_coors_17748x4_bxyz_int32.npy")))
    return cfg, [voxelize(torch.from_numpy(points), cfg), (voxels, coords)]


class Both:
    """Feeds every tensor to the library's HistogramCalibrator and to ours."""

    def __init__(self):
        self.library = calib.HistogramCalibrator(8, None, False)
        self.ours = C.HistogramCollector()

    def collect(self, x):
        self.library.collect(x)
        self.ours.collect(x)


def library_rule(method: str, lib: calib.HistogramCalibrator) -> float:
    """The library's rule on the library's own histogram, through our transcription of it (equal to the
    library's code, see the test above; its mse and entropy loops take minutes on grown histograms)."""
    hist = lib._calib_hist.numpy()
    edges = lib._calib_bin_edges.numpy()
    return float(collector_of(hist, float(edges[1] - edges[0])).compute_amax(method))


def test_amax_within_1_percent_of_the_library_on_real_scans(real_scans, library_mse_on_cpu):
    from helpers.pipeline import prepare_scn
    cfg, scans = real_scans
    model = prepare_scn(place(build_scn(cfg), "cpu"), scans[:1], int8=False, progress=False)
    layers = [(f"{path}.{kind}", q) for path, kind, q in named_quantizers(model) if kind != "weight"]
    for _, q in layers:
        q._calibrator = Both()
        q.enable(), q.disable_quant(), q.enable_calib()
    for path, kind, q in named_quantizers(model):
        if kind == "weight":
            q.disable()
    with torch.no_grad():
        for scan in scans:
            model(*scan)
    grown = [name for name, q in layers if q._calibrator.library._calib_hist.numel() > 4 * C.FIRST_BINS]
    assert len(grown) >= 3  # residual adds: their first input is the smaller one, the library adds bins
    for method in C.METHODS:
        ours = C.histogram_amax([q._calibrator.ours for _, q in layers], method)
        for (name, q), amax in zip(layers, ours.tolist()):
            reference = library_rule(method, q._calibrator.library)
            assert amax == pytest.approx(reference, rel=0.01), (method, name)
    # and the library's own code, where it runs in seconds (2048 bins): a few layers
    plain = [(name, q) for name, q in layers if q._calibrator.library._calib_hist.numel() == C.FIRST_BINS]
    for name, q in [plain[0], plain[len(plain) // 2], plain[-1]]:
        lib = q._calibrator.library
        for method in (["mse", "entropy", "percentile"] if name == plain[0][0] else ["mse", "percentile"]):
            ours = float(q._calibrator.ours.compute_amax(method))
            assert ours == pytest.approx(float(lib.compute_amax(method)), rel=0.01), (method, name)


def test_histogram_size_does_not_depend_on_the_data():
    c = C.HistogramCollector()
    c.collect(torch.tensor([1e-6, 2e-6]))  # a tiny first input sets a tiny bin width ...
    c.collect(torch.tensor([5e3, 1.0]))  # ... then a value 10^9 widths away
    c.collect(torch.full((10,), float("1e30")))
    assert c.hist.numel() == C.BINS and float(c.hist.sum()) == 14  # every value counted, bins merged
    assert c.width * C.BINS >= 1e30
    assert float(c.compute_amax("percentile")) > 0


def test_bins_merge_exactly():
    w0 = 2.0 / C.FIRST_BINS  # the first tensor's max (2.0) spans 2048 bins
    x = torch.rand(1000) * 2
    x[0] = 2.0
    y = torch.rand(1000) * 2.5 * C.BINS * w0  # 2.5 x beyond the last bin: groups of 4 bins merge
    y[0] = 2.5 * C.BINS * w0
    c = C.HistogramCollector()
    c.collect(x)
    c.collect(y)
    assert c.first_width == w0 and c.width == 4 * w0
    # as the library's histc: the first tensor's max (bin 2048 by floor) closes the last of its 2048 bins
    expected = np.bincount(np.minimum(x.numpy() / w0, 2047).astype(int), minlength=C.BINS).reshape(-1, 4).sum(1)
    expected = np.pad(expected, (0, C.BINS - len(expected)))
    expected += np.bincount((y.numpy() / (4 * w0)).astype(int), minlength=C.BINS)
    assert np.array_equal(c.hist.numpy(), expected)


def test_collect_on_a_gpu_waits_for_nothing_until_the_scan_ends(monkeypatch):
    """On a GPU, collect() queues |x| and its max; the counts come in flush_all, with one host read."""
    gpu_path_on_the_cpu(monkeypatch)
    c = C.HistogramCollector()
    reads = []
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _name=name, _f=original, **k:
                            reads.append(_name) or _f(self, *a, **k))
    c.collect(torch.randn(100, 16))
    c.collect(torch.randn(100, 16) * 100)
    c.collect(torch.tensor([float("nan"), 1.0]))
    assert reads == [] and len(c._queue) == 3
    C.flush_all([c])
    assert reads.count("cpu") == 1 and c._queue == []
    monkeypatch.undo()
    assert c.bad and float(c.hist.sum()) == 3200  # the NaN tensor is not counted: its amax is NaN
    assert math.isnan(float(c.compute_amax("mse")))


def gpu_path_on_the_cpu(monkeypatch):
    """Tensors claim to be on a GPU, and histc counts as the CUDA one does (values outside lo..hi skipped)."""
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))

    def histc(a, bins, lo, hi):
        a = a[(a >= lo) & (a <= hi)]
        return torch.bincount((a / (hi / bins)).to(torch.int64).clamp(0, bins - 1), minlength=bins).float()
    monkeypatch.setattr(torch, "histc", histc)


def test_zeros_counted_apart_on_a_gpu_give_the_same_histogram(monkeypatch):
    """The GPU path counts exact zeros with a sum, not in histc: the histogram must not change."""
    torch.manual_seed(0)
    tensors = [torch.relu(torch.randn(500, 16)), torch.relu(torch.randn(300, 16) * 3), torch.zeros(40, 16)]
    assert all(float((t == 0).float().mean()) > 0.4 for t in tensors)  # post-ReLU: many exact zeros
    cpu = C.HistogramCollector()
    for t in tensors:
        cpu.collect(t)
    gpu_path_on_the_cpu(monkeypatch)
    gpu = C.HistogramCollector()
    for t in tensors:
        gpu.collect(t)
    C.flush_all([gpu])
    monkeypatch.undo()
    zeros = sum(int((t == 0).sum()) for t in tensors)
    assert zeros <= float(gpu.hist[0]) < zeros + 100  # bin 0: the zeros and the few values below one width
    assert torch.equal(gpu.hist, cpu.hist) and gpu.width == cpu.width


def prepared_scn(cfg):
    """Quantized, BN folded, ReLU fused, not calibrated."""
    return set_precision(fuse(quantize_scn(place(build_scn(cfg), "cpu")), *random_voxels(cfg)))


def test_zeros_and_nan_are_named_by_check_calibrated():
    model = prepared_scn(get_config("bevfusion-01"))
    voxels, coords = random_voxels(get_config("bevfusion-01"), n=200)
    with pytest.raises(WorkbookError, match=re.escape("conv_input.0.input (non-finite amax)")):
        C.calibrate(copy.deepcopy(model), [(voxels * float("nan"), coords)], progress=False)
    with pytest.raises(WorkbookError, match=re.escape("conv_input.0.input (non-positive amax)")):
        C.calibrate(copy.deepcopy(model), [(voxels * 0, coords)], progress=False)


def test_a_two_point_scan_keeps_every_histogram_at_the_cap():
    cfg = get_config("bevfusion-01")
    model = prepared_scn(cfg)
    voxels, coords = random_voxels(cfg, n=2, seed=3)
    try:
        C.calibrate(model, [(voxels * 1e-3, coords), random_voxels(cfg, seed=4)], progress=False)
    except WorkbookError:  # a layer that sees nothing from two points is named; the sizes are what matters here
        pass
    sizes = [q._calibrator.hist.numel() for _, kind, q in named_quantizers(model)
             if kind != "weight" and q._calibrator.hist is not None]
    assert sizes and set(sizes) == {C.BINS}
