"""Calibration: run a few scans through the quantized SCN and set the amax of every quantizer.

Inputs and adds use a histogram and pick the amax with the least int8 error ("mse", the default;
"entropy" and "percentile" are pytorch-quantization's); weights use their max per output channel.
"""
import torch
from absl import logging as absl_logging
from pytorch_quantization import calib
from pytorch_quantization.nn import TensorQuantizer
from pytorch_quantization.tensor_quant import fake_tensor_quant
from torch import nn
from tqdm.auto import tqdm

from helpers.errors import WorkbookError
from helpers.quant.modules import named_quantizers
from helpers.quant.ranges import check_calibrated


def mse_amax(calibrator: calib.HistogramCalibrator, start_bin: int = 128) -> float:
    """pytorch-quantization's "mse" amax without its hard-coded .cuda(): the bin centre with least int8 error."""
    if calibrator._calib_hist is None:
        return float("nan")  # saw no data; check_calibrated names the layer
    counts = calibrator._calib_hist.float().cpu()  # [B]
    edges = calibrator._calib_bin_edges.float().cpu()[:counts.numel() + 1]  # [B + 1]; a grown one may have an extra
    centers = (edges[1:] + edges[:-1]) / 2  # [B]
    candidates = centers[start_bin:, None]  # [A, 1] amax values to try, 32 at a time (cache-sized)
    errors = torch.cat([((fake_tensor_quant(centers.expand(len(amax), -1), amax, 8) - centers) ** 2 * counts).mean(1)
                        for amax in candidates.split(32)])  # [A] weighted squared int8 error per candidate
    return float(candidates[int(errors.argmin())])


def fresh_calibrator(quantizer: TensorQuantizer):
    """A new, empty calibrator of the same kind (reset() would keep a histogram's grown bin count)."""
    kind = type(quantizer._calibrator)  # HistogramCalibrator or MaxCalibrator
    return kind(num_bits=quantizer.num_bits, axis=quantizer.axis, unsigned=quantizer.unsigned)


def calibrate(model: nn.Module, batches, method: str = "mse", progress: bool = True) -> nn.Module:
    """Run (voxels, coords) batches through the model to collect statistics, then load every amax."""
    if len(batches) == 0:
        raise WorkbookError("calibrate got no batches; pass a list of (voxels, coords) pairs with at least one scan")
    quantizers = [q for _, _, q in named_quantizers(model)]
    if not quantizers:
        raise WorkbookError("the model has no quantizers; run helpers.quant.modules.quantize_scn(model) first")
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # pytorch-quantization warns once per quantizer otherwise
    try:
        for q in quantizers:
            q._calibrator = fresh_calibrator(q)  # a second calibrate() starts afresh
            q.enable()
            q.disable_quant()
            q.enable_calib()
        with torch.no_grad():
            for voxels, coords in tqdm(batches, desc="calibrating", disable=not progress):
                model(voxels, coords)
        for q in quantizers:
            if isinstance(q._calibrator, calib.MaxCalibrator):
                q.load_calib_amax(strict=False)  # per-channel [C_out, 1, 1, 1, 1]; takes no method
            elif method == "mse":
                q.amax = mse_amax(q._calibrator)
            else:
                q.load_calib_amax(method=method, strict=False)  # "entropy" or "percentile"
            q.to(batches[0][0].device)  # some calibrators return amax on the CPU
    finally:
        for q in quantizers:
            q.disable_calib()
            q.enable_quant()
        absl_logging.set_verbosity(verbosity)
    check_calibrated(model)  # a layer that saw no data (or only zeros) is named here
    return model
