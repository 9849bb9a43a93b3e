"""Calibration: the int8 amax of every quantizer from a few scans, fast and with bounded memory.

    calibrate(model, batches, method="mse")   run the scans, then set every quantizer's amax
    HistogramCollector                         |x| histogram of one quantizer, on the tensor's device
    histogram_amax(collectors, method)         mse / entropy / percentile amax of many histograms at once

Input and add quantizers (per tensor) collect a histogram of |x| while the scans run; weight
quantizers (per output channel) take the largest |w| of each channel once, after the scans.

Bins: the first tensor's largest |x| spans 2048 of them, as in pytorch-quantization's
HistogramCalibrator, so both give the same histogram and the same amax (a finer or coarser width
moves the mse amax by up to 2-3 % on real scans: the error curve is flat near its minimum). Unlike
the library, which adds bins as the range grows (a residual add whose first input is small grew to
tens of thousands of bins and gigabytes), the number of bins is fixed (`BINS`, whatever the data):
beyond the last bin, neighbouring bins merge in pairs, exactly, and the width doubles. On a GPU
the host reads one value per layer once per scan (all in one copy); the counting runs on a second
CUDA stream, so it overlaps the next scan's forward pass, and exact zeros are counted apart.

The amax rules are pytorch-quantization 2.1.3's (`HistogramCalibrator.compute_amax`), computed for
all quantizers at once with prefix sums instead of one loop per candidate:
  mse         the candidate (a bin centre) with the least squared int8 error over the histogram
  entropy     the candidate (a bin edge) with the least KL divergence, TensorRT's rule
  percentile  the bin edge where the cumulative count reaches `percentile` %
Candidates start at bin 128 of the first width (the library's start_bin).
"""
import math
from typing import Dict, List, Sequence

import torch
from torch import nn

from helpers.errors import WorkbookError
from helpers.quant.modules import named_quantizers
from helpers.quant.precision import sync_quantizers
from helpers.quant.ranges import check_calibrated

BINS = 32768  # histogram bins, whatever the data: 32768 x 8 bytes = 256 KiB per quantizer (the library's
# residual adds reach 22,000 bins on the real nuScenes scans; fewer would merge them and move the entropy amax)
FIRST_BINS = 2048  # the first tensor's largest |x| spans 2048 bins: the library's bin width
START_BIN = 128  # candidates start at bin 128 of that first width (the library's start_bin)
LEVELS = 127  # int8: -127..127
METHODS = ("mse", "entropy", "percentile")
CHUNK = 256  # candidates evaluated at a time (bounds the [quantizers, CHUNK, 128] work tensors)
SMALLEST_WIDTH = 2.0 ** -100  # a width that float32 holds exactly, whatever the data


PENDING = 64  # on a GPU, tensors kept (as |x| copies) before their counts are taken in one batch


class HistogramCollector:
    """A histogram of |x| over every tensor one quantizer sees, kept on that tensor's device.

    Bin width: the first non-zero tensor's largest |x| / 2048, as pytorch-quantization's
    HistogramCalibrator, so the two give the same histogram and the same amax; a value goes to bin
    floor(|x| / width), computed as the library computes it. Where the library would add bins
    beyond `bins`, neighbouring bins merge (2, 4, ... at a time) and the width doubles as often,
    so memory is `bins` float64 counts whatever the data. Duck-types the library's calibrator:
    TensorQuantizer calls `collect(x)` while calibrating.

    On a GPU, `collect` only queues |x| and its max (no wait); `flush_all` (called once per scan by
    `calibrate`, and by `histogram_amax`) reads the maxima of every queued tensor of every
    collector in one host copy, then counts each tensor with one histc call on a second CUDA stream.
    On a CPU, where reading a value costs nothing, each tensor is counted at once.
    """

    def __init__(self, bins: int = BINS):
        if bins < FIRST_BINS or bins & (bins - 1):
            raise ValueError(f"a histogram needs a power of two >= {FIRST_BINS} bins, got {bins}")
        self.bins = bins
        self.hist = None  # [bins] float64 counts on the device of the first tensor; bin i is [i w, (i + 1) w)
        self.width = 0.0  # w; 0 until a tensor with a non-zero value came
        self.first_width = 0.0  # the width before any merge (candidates start at bin 128 of those)
        self.max = 0.0  # the largest finite |x| seen
        self.bad = False  # some value was NaN or infinite: the amax becomes NaN
        self._queue = []  # (|x|, its max as a 0-d device tensor) not yet counted

    def collect(self, x: torch.Tensor):
        """Queue |x| (a GPU does not wait); on a CPU, count it at once."""
        x = x.detach()
        if x.numel() == 0:
            return
        if self.hist is None:
            self.hist = torch.zeros(self.bins, device=x.device, dtype=torch.float64)
        a = x.float().abs()  # a copy: a later in-place change of x cannot reach the queue
        self._queue.append((a, a.amax()))  # amax propagates NaN
        if not a.is_cuda or len(self._queue) >= PENDING:
            flush_all([self])

    def _count(self, a: torch.Tensor, top: float):
        """Add |x| = `a`, whose max is `top`, to the histogram (merging bins first if it reaches past them)."""
        if not math.isfinite(top):
            self.bad = True  # the amax will be NaN: counting the rest would not change that
            return
        self.max = max(self.max, top)
        if self.width == 0:
            if self.max == 0:  # only zeros so far: they are bin 0 whatever the width will be
                self.hist[0] += a.numel()
                return
            self.width = self.first_width = max(self.max / FIRST_BINS, SMALLEST_WIDTH)
        if self.max > self.width * self.bins:  # 2**k neighbouring bins become one, exactly
            factor = 2 ** math.ceil(math.log2(self.max / (self.width * self.bins)))
            while self.max > self.width * factor * self.bins:  # log2 rounding
                factor *= 2
            merged_into = torch.arange(self.bins, device=self.hist.device) // min(factor, self.bins)
            self.hist = torch.zeros_like(self.hist).index_add_(0, merged_into, self.hist)
            self.width *= factor
        used = min(self.bins, 1 << max(0, math.ceil(top / self.width) - 1).bit_length())  # power of two >= top / w
        if a.is_cuda:  # bin = (int)(a * used / (used * w)) = floor(a / w): the library's histc arithmetic
            zero = a == 0  # after a ReLU a third to a half of the values are exact zeros: in histc they would all
            self.hist[0] += zero.sum()  # hit bin 0 and queue on one counter (2-10x slower); counted apart instead,
            counts = torch.histc(a.masked_fill_(zero, -1.0), used, 0, used * self.width)  # histc skips -1
        else:  # the same bins, about 3x faster than histc on a CPU (a scalar division is IEEE here)
            counts = torch.bincount(a.div_(self.width).flatten().to(torch.int32).clamp_(0, used - 1), minlength=used)
        self.hist[:used] += counts

    def reset(self):
        self.__init__(self.bins)

    def compute_amax(self, method: str = "mse", **kwargs) -> torch.Tensor:
        """This histogram's amax (a 0-d tensor on its device); see `histogram_amax`."""
        return histogram_amax([self], method, **kwargs)[0]


_COUNTING_STREAMS = {}  # CUDA device -> the second stream the histograms are counted on


def flush_all(collectors: Sequence[HistogramCollector], wait: bool = True):
    """Count every queued tensor of these collectors: one host copy for all their maxima.

    On a GPU the counting runs on a second CUDA stream, so the next scan's forward pass, launched while
    the counting still runs, overlaps it (a sparse forward leaves most of the GPU idle). wait=False returns
    without joining the streams: `calibrate` does that between scans; every reader of a histogram joins.
    """
    jobs = [(c, a, top) for c in collectors for a, top in c._queue]
    if jobs:
        tops = torch.stack([top.float() for _, _, top in jobs]).cpu().tolist()  # the one read
        for c in collectors:
            c._queue = []
        device = jobs[0][1].device
        if device.type != "cuda":
            for (c, a, _), top in zip(jobs, tops):
                c._count(a, top)
        else:
            if device not in _COUNTING_STREAMS:
                _COUNTING_STREAMS[device] = torch.cuda.Stream(device)
            side = _COUNTING_STREAMS[device]
            side.wait_stream(torch.cuda.current_stream(device))  # the queued |x| copies are complete
            with torch.cuda.stream(side):
                for (c, a, _), top in zip(jobs, tops):
                    a.record_stream(side)  # the allocator keeps its memory until the side stream is done
                    c.hist.record_stream(side)
                    c._count(a, top)
    if wait:
        for device, side in _COUNTING_STREAMS.items():
            if any(c.hist is not None and c.hist.device == device for c in collectors):
                torch.cuda.current_stream(device).wait_stream(side)  # the counts are complete


def _prefix(values: torch.Tensor) -> torch.Tensor:
    """[Q, B] -> [Q, B + 1]: sums of the first 0, 1, ..., B values of each row."""
    return torch.nn.functional.pad(values.cumsum(1), (1, 0))


def _xlogx(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x * torch.log(x.clamp_min(1e-300)), torch.zeros_like(x))


def _chunks(need: List[int], begin: int):
    """(start, stop, rows) for candidate columns begin.. in CHUNKs; rows sorted by `need` (host ints,
    descending: how many columns each row uses), so the rows a chunk needs are the first `rows`."""
    for start in range(begin, max(need, default=0), CHUNK):
        yield start, min(start + CHUNK, need[0]), sum(n > start for n in need)


def _mse_bins(hist: torch.Tensor, first: torch.Tensor, last: torch.Tensor, need: List[int],
              begin: int = 0) -> torch.Tensor:
    """[Q] bin whose centre, as amax, gives the least squared int8 error; candidates first..last.

    In units of one bin width, bin i's centre is t = i + 0.5 and candidate j's amax is a = j + 0.5.
    Bin i goes to level round(t * 127 / a), at most 127, i.e. level k >= 1 holds the bins from
    b_k = ceil((k - 0.5) a / 127 - 0.5) on. The error sum_k sum_{i in k} h_i (k a / 127 - t_i)^2 is,
    with prefix sums P0 (of h) and P1 (of h t) and up to a term that no candidate changes,
        (a/127)^2 (127^2 P0[B] - sum_k (2k - 1) P0[b_k]) - 2 (a/127) (127 P1[B] - sum_k P1[b_k]).
    `need` (host, descending): last + 1 of each row; `begin`: no row's first is below it.
    """
    q, bins = hist.shape
    t = torch.arange(bins, device=hist.device, dtype=torch.float64) + 0.5
    p0, p1 = _prefix(hist), _prefix(hist * t)  # [Q, B + 1]
    k = torch.arange(1, LEVELS + 1, device=hist.device, dtype=torch.float64)  # [127]
    errors = torch.full((q, bins), float("inf"), device=hist.device, dtype=torch.float64)
    for start, stop, n in _chunks(need, begin):
        a = torch.arange(start, stop, device=hist.device, dtype=torch.float64) + 0.5  # [A]
        b = torch.ceil((k - 0.5) * a[:, None] / LEVELS - 0.5).clamp_(0, bins).long()  # [A, 127]
        s0 = LEVELS ** 2 * p0[:n, -1:] - p0[:n, b] @ (2 * k - 1)  # [n, A]
        s1 = LEVELS * p1[:n, -1:] - p1[:n, b].sum(-1)  # [n, A]
        step = a / LEVELS  # [A]
        errors[:n, start:stop] = step ** 2 * s0 - 2 * step * s1
    j = torch.arange(bins, device=hist.device)
    errors.masked_fill_((j < first[:, None]) | (j > last[:, None]), float("inf"))  # masked_fill: no GPU wait
    return errors.argmin(1)  # the first of equal minima, as numpy's argmin


def _entropy_bins(hist: torch.Tensor, first: torch.Tensor, last: torch.Tensor, need: List[int],
                  begin: int = 1) -> torch.Tensor:
    """[Q] number of bins i (amax = edge i) with the least KL divergence; candidates first..last.

    The library's rule: the reference keeps bins[:i] and adds everything above to bin i - 1; the
    candidate splits bins[:i] into 128 groups (bin j in group 128 j // i) and spreads each group's
    count evenly over its non-empty bins; bin 0 first takes bin 1's count; the last of equal minima
    wins. Per group, with prefix sums, instead of per bin. Candidate i is column i - 1; `need`
    (host, descending): last of each row; `begin`: no row's first - 1 is below it.
    """
    q, bins = hist.shape
    h = hist.clone()
    h[:, 0] = h[:, 1]
    total = h.sum(1, keepdim=True)  # [Q, 1]
    p0, pn, pl = _prefix(h), _prefix((h > 0).double()), _prefix(_xlogx(h))  # [Q, B + 1]
    g = torch.arange(LEVELS + 2, device=hist.device)  # group boundaries 0..128
    divergences = torch.full((q, bins), float("inf"), device=hist.device, dtype=torch.float64)
    for start, stop, n in _chunks(need, begin):
        i = torch.arange(start + 1, stop + 1, device=hist.device)  # [A] bins kept
        lo = (g * i[:, None] + LEVELS) // (LEVELS + 1)  # [A, 129] first bin of each group; lo[:, 128] = i
        counts = p0[:n, lo[:, 1:]] - p0[:n, lo[:, :-1]]  # [n, A, 128]
        filled = pn[:n, lo[:, 1:]] - pn[:n, lo[:, :-1]]  # [n, A, 128] non-empty bins per group
        kept = p0[:n, i]  # [n, A]
        tail = total[:n] - kept  # [n, A] count above the candidate, added to bin i - 1
        last_bin = h[:n, i - 1]  # [n, A]
        plogp = (pl[:n, i - 1] + _xlogx(last_bin + tail)) / total[:n] - torch.log(total[:n])  # sum p log p
        last_group = ((LEVELS + 1) * (i - 1) // i).expand(n, -1)[..., None]  # [n, A, 1]: 127 once i >= 128
        weights = counts.scatter_add(2, last_group, torch.where(last_bin > 0, tail, torch.zeros_like(tail))[..., None])
        q_group = counts / filled.clamp_min(1) / kept.clamp_min(1e-300)[..., None]  # q of each non-empty bin
        plogq = (torch.where(counts > 0, weights * torch.log(q_group.clamp_min(1e-300)), torch.zeros_like(counts))
                 .sum(-1) / total[:n])
        kl = plogp - plogq
        kl.masked_fill_(((last_bin == 0) & (tail > 0)) | (kept <= 0), float("inf"))  # p > 0 where q = 0
        divergences[:n, start:stop] = kl
    i = torch.arange(1, bins + 1, device=hist.device)
    divergences.masked_fill_((i < first[:, None]) | (i > last[:, None]), float("inf"))
    flipped = divergences.flip(1).argmin(1)  # the last of equal minima, as the library
    return bins - flipped  # i = bins - flipped


def histogram_amax(collectors: Sequence[HistogramCollector], method: str = "mse",
                   percentile: float = 99.99) -> torch.Tensor:
    """[Q] amax of each collector's histogram (float32, on the first one's device), all at once:
    NaN where a collector saw NaN or infinity, 0 where it saw nothing or only zeros."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile {percentile} is outside 0..100")
    if not collectors:
        return torch.empty(0)
    flush_all(collectors)
    bins = collectors[0].bins
    if any(c.bins != bins for c in collectors):
        raise ValueError("histogram_amax needs collectors with the same number of bins")
    seen = [c for c in collectors if c.hist is not None]
    device = seen[0].hist.device if seen else torch.device("cpu")
    hist = torch.stack([c.hist.to(device) if c.hist is not None else torch.zeros(bins, device=device,
                                                                                  dtype=torch.float64)
                        for c in collectors])  # [Q, B]
    width = torch.tensor([c.width for c in collectors], device=device, dtype=torch.float64)  # [Q]
    # bins up to the one holding the max, and the first candidate (bin 128 of the first width)
    filled = [min(bins, max(1, math.ceil(c.max / c.width))) if c.width > 0 else 1 for c in collectors]
    start = [min(bins, max(1, math.ceil(START_BIN * c.first_width / c.width))) if c.width > 0 else 1
             for c in collectors]
    if method == "percentile":
        cdf = (hist / hist.sum(1, keepdim=True).clamp_min(1e-300)).cumsum(1)  # the library's order of operations
        goal = torch.full((len(collectors), 1), percentile / 100, device=device, dtype=torch.float64)
        amax = torch.searchsorted(cdf, goal)[:, 0].clamp_max(bins).double() * width  # left edge, as the library
    else:  # rows sorted by how many candidates they need, so a chunk of candidates works on the first rows
        order = sorted(range(len(collectors)), key=lambda r: -filled[r])
        index = torch.tensor(order, device=device)
        last = torch.tensor([filled[r] for r in order], device=device)
        first = torch.tensor([start[r] for r in order], device=device)
        need, begin = [filled[r] for r in order], max(min(start) - 1, 0)
        if method == "mse":  # candidates: centres of bins start .. filled - 1
            best = _mse_bins(hist[index], first.clamp_max(last - 1), last - 1, need, begin).double() + 0.5
        else:  # candidates: edges start .. filled
            best = _entropy_bins(hist[index], first.clamp_max(last), last, need, begin).double()
        amax = torch.empty_like(best).index_copy_(0, index, best) * width
    usable = torch.tensor([c.width > 0 and c.max > 0 for c in collectors], device=device)
    bad = torch.tensor([c.bad for c in collectors], device=device)
    amax = torch.where(usable, amax, torch.zeros_like(amax))
    return torch.where(bad, torch.full_like(amax, float("nan")), amax).float()


def _set_amax(quantizer, value: torch.Tensor):
    """Put `value` into the quantizer's amax buffer (as load_calib_amax does, without its logging)."""
    value = value.detach()
    if hasattr(quantizer, "_amax") and quantizer._amax.shape == value.shape:
        quantizer._amax.data.copy_(value)
    else:
        if hasattr(quantizer, "_amax"):
            del quantizer._amax
        quantizer.register_buffer("_amax", value.clone())


def weight_amax(weight: torch.Tensor, axis) -> torch.Tensor:
    """Largest |w| per channel along `axis` (kept as size-1 dims elsewhere), or of all when axis is None."""
    if axis is None:
        return weight.detach().abs().amax().float()
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    reduce = [d for d in range(weight.dim()) if d not in axes]
    return weight.detach().abs().amax(dim=reduce, keepdim=True).float()


def calibrate(model: nn.Module, batches, method: str = "mse", progress: bool = True, bins: int = BINS) -> nn.Module:
    """Run (voxels, coords) batches through the model to collect histograms, then set every amax.

    Every quantizer gets an amax, also those of fp16 layers (so the cost of quantizing them can be
    measured: int8_cost(..., quantize_fp16_layers=True)); afterwards only the int8 layers' are on.
    """
    if method not in METHODS:
        raise WorkbookError(f"calibration method {method!r} is unknown; use one of {', '.join(METHODS)}")
    if len(batches) == 0:
        raise WorkbookError("calibrate got no batches; pass a list of (voxels, coords) pairs with at least one scan")
    layers = named_quantizers(model)
    if not layers:
        raise WorkbookError("the model has no quantizers; run helpers.quant.modules.quantize_scn(model) first")
    weights = [(model.get_submodule(path), q) for path, kind, q in layers if kind == "weight"]
    inputs = [q for _, kind, q in layers if kind != "weight"]  # conv inputs and add inputs: histograms
    # the switches are set directly: the library's enable_calib() / disable_calib() log a line per quantizer
    try:
        for q in inputs:
            q._calibrator = HistogramCollector(bins)  # a second calibrate() starts afresh
            q._disabled, q._if_quant, q._if_calib = False, False, True  # collect, pass x through unchanged
        for _, q in weights:
            q._disabled = True  # the scans run the float weights; their amax needs no scan
        with torch.no_grad():
            collectors = [q._calibrator for q in inputs]
            for voxels, coords in _progress(batches, progress):
                model(voxels, coords)
                flush_all(collectors, wait=False)  # on a GPU: one host read per scan; counting overlaps the next scan
        device = batches[0][0].device
        amax = histogram_amax(collectors, method).to(device)  # [Q], one batch of work
        for q, value in zip(inputs, amax):
            _set_amax(q, value)
        for layer, q in weights:
            _set_amax(q, weight_amax(layer.weight, q.axis))
    finally:
        for q in inputs + [q for _, q in weights]:
            q._disabled, q._if_quant, q._if_calib = False, True, False  # fake int8 on, as before calibrating
        sync_quantizers(model)  # an fp16 layer's quantizers are off again: it computes in float, as the engine does
    flat = torch.cat([q.amax.reshape(-1).float() for _, _, q in layers]).cpu()  # one host copy
    if not (torch.isfinite(flat).all() and (flat > 0).all()):
        check_calibrated(model)  # names every layer that saw no data, only zeros, NaN or infinity
    return model


def use_amax(model: nn.Module, amax: Dict[str, torch.Tensor]) -> nn.Module:
    """Set every quantizer's amax to the calibrated value a checkpoint holds for it ({quantizer path: tensor}),
    as it is: no scan runs. The per-channel weight ranges take the quantizer's own shape."""
    device = next(model.parameters()).device
    for path, kind, q in named_quantizers(model):
        key = f"{path}.{'quantizer' if kind == 'add' else kind + '_quantizer'}"
        if key not in amax:
            raise WorkbookError(f"no calibrated amax for {key}; the checkpoint's quantizers do not match the SCN")
        value = amax[key].detach().float().to(device)
        if kind == "weight":  # per output channel: [C_out] or [C_out, 1, 1, 1, 1] -> the quantizer's shape
            value = value.reshape(weight_amax(model.get_submodule(path).weight, q.axis).shape)
        _set_amax(q, value)
    sync_quantizers(model)
    check_calibrated(model)  # a zero or non-finite range names its layer
    return model


def _progress(batches, show: bool):
    if not show:
        return batches
    from tqdm.auto import tqdm  # only when a bar is wanted (tqdm.auto looks for ipywidgets)

    return tqdm(batches, desc="calibrating")


def library_amax(collector: HistogramCollector, method: str, **kwargs) -> float:
    """The library's own compute_amax on this histogram (reference for tests; mse needs CUDA there)."""
    from pytorch_quantization.calib import histogram as library

    flush_all([collector])
    filled = math.ceil(collector.max / collector.width)
    hist = collector.hist[:filled].cpu().numpy().astype("int64")
    edges = (torch.arange(filled + 1, dtype=torch.float64) * collector.width).numpy()
    rule = {"entropy": library._compute_amax_entropy, "percentile": library._compute_amax_percentile,
            "mse": library._compute_amax_mse}[method]
    args = (hist, edges) if method == "percentile" else (hist, edges, 8, False)
    return float(rule(*args, **kwargs))


__all__: List[str] = ["BINS", "METHODS", "HistogramCollector", "histogram_amax", "weight_amax", "calibrate",
                      "use_amax"]
