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
beyond the last bin, neighbouring bins merge in pairs, exactly, and the width doubles. Nothing is
read back to the host while the scans run: the width, the merge and the counting are device
operations, so a GPU never waits.

The amax rules are pytorch-quantization 2.1.3's (`HistogramCalibrator.compute_amax`), computed for
all quantizers at once with prefix sums instead of one loop per candidate:
  mse         the candidate (a bin centre) with the least squared int8 error over the histogram
  entropy     the candidate (a bin edge) with the least KL divergence, TensorRT's rule
  percentile  the bin edge where the cumulative count reaches `percentile` %
Candidates start at bin 128 of the first width (the library's start_bin).
"""
from typing import List, Sequence

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
SMALLEST_WIDTH = 2.0 ** -100  # so that 1 / width stays a finite float32


class HistogramCollector:
    """A histogram of |x| over every tensor one quantizer sees, kept on that tensor's device.

    Bin width: the first non-zero tensor's largest |x| / 2048, as pytorch-quantization's
    HistogramCalibrator, so the two give the same histogram and the same amax. Where the library
    would add bins beyond `bins`, neighbouring bins merge in pairs instead (the width doubles), so
    memory is `bins` float64 counts whatever the data. Duck-types the library's calibrator:
    TensorQuantizer calls `collect(x)` while calibrating.
    """

    def __init__(self, bins: int = BINS):
        if bins < FIRST_BINS:
            raise ValueError(f"a histogram needs at least {FIRST_BINS} bins, got {bins}")
        self.bins = bins
        self.hist = None  # [bins] float64 counts on the device of the first tensor; bin i is [i w, (i + 1) w)
        self.width = None  # [] float64: w, 0 until a tensor with a non-zero value came
        self.first_width = None  # [] float64: the width before any merge (candidates start at 128 of those)
        self.max = None  # [] float64: the largest finite |x| seen
        self.bad = None  # [] bool: some value was NaN or infinite (the amax becomes NaN)
        self._positions = None  # [bins] float64 0, 1, ..., bins - 1 (to merge bins)

    def collect(self, x: torch.Tensor):
        """Add |x| to the histogram; device operations only (no host copy, no GPU wait)."""
        x = x.detach()
        if x.numel() == 0:
            return
        if self.hist is None:
            kw = dict(device=x.device, dtype=torch.float64)
            self.hist, self._positions = torch.zeros(self.bins, **kw), torch.arange(self.bins, **kw)
            self.width, self.first_width, self.max = (torch.zeros((), **kw) for _ in range(3))
            self.bad = torch.zeros((), device=x.device, dtype=torch.bool)
        a = x.float().abs()  # a new tensor (abs copies), scaled in place below
        top = a.max().double()
        self.bad = self.bad | ~torch.isfinite(top)
        self.max = torch.maximum(self.max, torch.nan_to_num(top, nan=0.0, posinf=0.0))
        starts = (self.width == 0) & (self.max > 0)  # the first non-zero tensor sets the width
        self.width = torch.where(starts, (self.max / FIRST_BINS).clamp_min(SMALLEST_WIDTH), self.width)
        self.first_width = torch.where(starts, self.width, self.first_width)
        # beyond the last bin: 2**k neighbouring bins become one, the width grows 2**k times (exact)
        over = torch.where(self.width > 0, self.max / (self.width * self.bins), torch.zeros_like(self.max))
        factor = torch.exp2(torch.ceil(torch.log2(over.clamp_min(1.0))))  # 1 unless the max left the bins
        merged_into = torch.floor(self._positions / factor).long()  # [bins]
        self.hist = torch.zeros_like(self.hist).index_add_(0, merged_into, self.hist)
        self.width = self.width * factor
        a.mul_(torch.where(self.width > 0, 1.0 / self.width, torch.zeros_like(self.width)).float())  # in bins
        if a.is_cuda:
            self.hist += _histc_in_shared_memory(a, self.bins)
        else:  # the same bins as histc, about 3x faster on a CPU
            self.hist += torch.bincount(a.flatten().to(torch.int32).clamp_(0, self.bins - 1), minlength=self.bins)

    def reset(self):
        self.__init__(self.bins)

    def compute_amax(self, method: str = "mse", **kwargs) -> torch.Tensor:
        """This histogram's amax (a 0-d tensor on its device); see `histogram_amax`."""
        return histogram_amax([self], method, **kwargs)[0]


GPU_PART = 8192  # bins per torch.histc call on a GPU: its fast kernel needs the bins in 48 KiB of shared memory


def _histc_in_shared_memory(a: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts of a (values in bin units) in bins [0, 1), ..., [bins - 1, bins], as torch.histc(a, bins, 0,
    bins) counts them, in parts of GPU_PART bins: histc keeps the histogram in shared memory only up
    to ~12,000 bins, and with more every thread adds to one global copy (the zeros after a ReLU would
    queue on one address). min and max are numbers, so nothing waits; NaN and inf are not counted.
    A part's extra top bin [hi, hi + 1] (histc closes its last bin) is dropped: the next part counts it."""
    parts = []
    for lo in range(0, bins, GPU_PART):
        if lo + GPU_PART >= bins:
            parts.append(torch.histc(a, bins - lo, lo, bins))
        else:
            parts.append(torch.histc(a, GPU_PART + 1, lo, lo + GPU_PART + 1)[:GPU_PART])
    return torch.cat(parts)


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
    """[Q] amax of each collector's histogram (float32, on the first one's device): NaN where a
    collector saw NaN or infinity, 0 where it saw nothing or only zeros. One host read (how many
    candidates the largest histogram needs), not one per quantizer."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile {percentile} is outside 0..100")
    if not collectors:
        return torch.empty(0)
    bins = collectors[0].bins
    if any(c.bins != bins for c in collectors):
        raise ValueError("histogram_amax needs collectors with the same number of bins")
    seen = [c for c in collectors if c.hist is not None]
    device = seen[0].hist.device if seen else torch.device("cpu")

    def stack(get, empty):
        return torch.stack([get(c).to(device) if c.hist is not None else torch.tensor(empty, device=device)
                            for c in collectors])

    hist = stack(lambda c: c.hist, [0.0] * bins)  # [Q, B]
    top = stack(lambda c: c.max, 0.0)  # [Q]
    width = stack(lambda c: c.width, 0.0)  # [Q]
    first_width = stack(lambda c: c.first_width, 0.0)  # [Q]
    bad = stack(lambda c: c.bad, False)  # [Q]
    usable = width > 0  # saw a non-zero value
    width_or_1 = torch.where(usable, width, torch.ones_like(width))
    filled = torch.ceil(top / width_or_1).long().clamp(1, bins)  # [Q] bins up to the one holding max
    start = torch.ceil(START_BIN * first_width / width_or_1).long().clamp(1, bins)  # [Q]
    if method == "percentile":
        cdf = (hist / hist.sum(1, keepdim=True).clamp_min(1e-300)).cumsum(1)  # the library's order of operations
        goal = torch.full((len(collectors), 1), percentile / 100, device=device, dtype=torch.float64)
        amax = torch.searchsorted(cdf, goal)[:, 0].clamp_max(bins).double() * width  # left edge, as the library
    else:  # the one host read: how many candidates each histogram needs; rows sorted by it
        filled_host, start_host = torch.stack([filled, start]).tolist()
        order = sorted(range(len(collectors)), key=lambda r: -filled_host[r])
        index = torch.tensor(order, device=device)
        hist, first, last = hist[index], start[index], filled[index]
        need, begin = [filled_host[r] for r in order], max(min(start_host) - 1, 0)
        if method == "mse":  # candidates: centres of bins start .. filled - 1
            best = _mse_bins(hist, first.clamp_max(last - 1), last - 1, need, begin).double() + 0.5
        else:  # candidates: edges start .. filled
            best = _entropy_bins(hist, first.clamp_max(last), last, need, begin).double()
        amax = torch.empty_like(best).index_copy_(0, index, best) * width
    amax = torch.where(usable & (top > 0), amax, torch.zeros_like(amax))
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
            for voxels, coords in _progress(batches, progress):
                model(voxels, coords)
        device = batches[0][0].device
        amax = histogram_amax([q._calibrator for q in inputs], method).to(device)  # [Q], one batch of work
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


def _progress(batches, show: bool):
    if not show:
        return batches
    from tqdm.auto import tqdm  # only when a bar is wanted (tqdm.auto looks for ipywidgets)

    return tqdm(batches, desc="calibrating")


def library_amax(collector: HistogramCollector, method: str, **kwargs) -> float:
    """The library's own compute_amax on this histogram (reference for tests; mse needs CUDA there)."""
    from pytorch_quantization.calib import histogram as library

    filled = int(torch.ceil(collector.max / collector.width))
    hist = collector.hist[:filled].cpu().numpy().astype("int64")
    edges = (torch.arange(filled + 1, dtype=torch.float64) * float(collector.width)).numpy()
    rule = {"entropy": library._compute_amax_entropy, "percentile": library._compute_amax_percentile,
            "mse": library._compute_amax_mse}[method]
    args = (hist, edges) if method == "percentile" else (hist, edges, 8, False)
    return float(rule(*args, **kwargs))


__all__: List[str] = ["BINS", "METHODS", "HistogramCollector", "histogram_amax", "weight_amax", "calibrate"]
