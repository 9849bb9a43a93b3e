"""compare(a, b): how close two outputs of the same shape are, as cosine similarity and largest absolute difference.

The one comparison of the workbook: fake int8 against float, the file's re-run against PyTorch, GPU against CPU.
"""
import math
from typing import Dict

import torch

from helpers.errors import WorkbookError


def compare(a: torch.Tensor, b: torch.Tensor) -> Dict[str, float]:
    """{"cosine", "max_abs"} of two outputs of the same shape, in float64 (two all-zero outputs: cosine 1)."""
    if a.shape != b.shape:
        raise WorkbookError(f"cannot compare outputs of shapes {list(a.shape)} and {list(b.shape)}")
    a, b = a.detach().flatten(), b.detach().flatten()
    keep = a.ne(0) | b.ne(0)  # where both are zero nothing adds to a sum or a difference (most of a BEV map)
    a, b = a[keep].double(), b[keep].double()
    aa, bb = float(torch.dot(a, a)), float(torch.dot(b, b))  # three dot products: a third of cosine_similarity's time
    if aa == 0 or bb == 0:
        cosine = float(aa == bb)  # two all-zero outputs point the same way; one all-zero output does not
    else:
        cosine = max(-1.0, min(1.0, float(torch.dot(a, b)) / math.sqrt(aa * bb)))
    return {"cosine": cosine, "max_abs": float((a - b).abs().max()) if a.numel() else 0.0}
