"""compare(a, b): how close two outputs of the same shape are, as cosine similarity and largest absolute difference.

The one comparison of the workbook: fake int8 against float, the file's re-run against PyTorch, GPU against CPU.
"""
from typing import Dict

import torch

from helpers.errors import WorkbookError


def compare(a: torch.Tensor, b: torch.Tensor) -> Dict[str, float]:
    """{"cosine", "max_abs"} of two outputs of the same shape, in float64 (two all-zero outputs: cosine 1)."""
    if a.shape != b.shape:
        raise WorkbookError(f"cannot compare outputs of shapes {list(a.shape)} and {list(b.shape)}")
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    if a.norm() == 0 and b.norm() == 0:
        cosine = 1.0
    else:
        cosine = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    return {"cosine": cosine, "max_abs": float((a - b).abs().max()) if a.numel() else 0.0}
