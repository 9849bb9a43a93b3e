"""Quantization-aware fine-tuning (QAT) in miniature: a few steps that pull the fake-int8 network toward its
own float output.

    targets = float_outputs(model, scans)              the teacher: the float outputs (quantizers off), once
    losses = finetune(model, scans, targets, steps=6)  Adam on the last layers' biases, fake int8 on
    int8_costs(model, scans, targets)                  fake int8 against the teacher, per scan

Self-distillation: no labels, the float network is the teacher. Gradients pass the fake quantizers as if they
were not there (pytorch-quantization's straight-through estimator), except where a value is clipped. The amax
values stay as calibrated. Only biases are tuned by default: a few hundred numbers that can move each output
channel back by the mean error int8 gave it, a small change to the network; the last layers only, so the
backward pass is short. The tuned biases are not rounded to fp16: an export would round them to the values
the file stores.
"""
from typing import List, Sequence, Tuple

import torch
from torch import nn

from helpers.check.compare import compare
from helpers.errors import WorkbookError
from helpers.quant.precision import quantizers_disabled

Scan = Tuple[torch.Tensor, torch.Tensor]  # voxels [N, 5], coords [N, 4]
LAST_LAYERS = ("encoder_layers.encoder_layer4", "conv_out")  # tuned by default: a short backward pass


def float_outputs(model: nn.Module, scans: Sequence[Scan]) -> List[torch.Tensor]:
    """The teacher: the network's own float output on each scan, every quantizer off (and restored after)."""
    with torch.no_grad(), quantizers_disabled(model):
        return [model(voxels, coords) for voxels, coords in scans]


def relative_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sum (output - target)^2 / sum target^2: 0 when the fake-int8 output is the float one."""
    return ((output - target) ** 2).sum() / (target ** 2).sum().clamp_min(1e-30)


def parameters_under(model: nn.Module, layers: Sequence[str], biases_only: bool = True) -> List[nn.Parameter]:
    """The parameters (only the biases, by default) of the modules at the paths `layers`, in the model's order."""
    chosen = [p for name, p in model.named_parameters()
              if any(name.startswith(f"{path}.") for path in layers) and (name.endswith(".bias") or not biases_only)]
    if not chosen:
        tops = sorted({name.split(".")[0] for name, _ in model.named_parameters()})
        raise WorkbookError(f"finetune: no parameter to tune under {list(layers)}; give module paths such as {tops}")
    return chosen


def finetune(model: nn.Module, scans: Sequence[Scan], targets: Sequence[torch.Tensor], steps: int = 6,
             lr: float = 1e-4, layers: Sequence[str] = LAST_LAYERS, biases_only: bool = True) -> List[float]:
    """Adam steps on the chosen parameters, one scan per step in turn; the loss (relative_error) of each step.

    Only those parameters change; every parameter's requires_grad is as before afterwards, also on error.
    """
    if not scans or len(scans) != len(targets):
        raise WorkbookError(f"finetune needs one target per scan, got {len(scans)} scans and {len(targets)} targets; "
                            "make the targets with float_outputs(model, scans)")
    chosen = parameters_under(model, layers, biases_only)
    before = [(p, p.requires_grad) for p in model.parameters()]
    optimizer = torch.optim.Adam(chosen, lr=lr)
    losses = []
    try:
        for p, _ in before:
            p.requires_grad_(False)
        for p in chosen:
            p.requires_grad_(True)
        for step in range(steps):
            (voxels, coords), target = scans[step % len(scans)], targets[step % len(scans)]
            loss = relative_error(model(voxels, coords), target)  # fake int8 against float
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        for p, flag in before:
            p.requires_grad_(flag)
    return losses


def int8_costs(model: nn.Module, scans: Sequence[Scan], targets: Sequence[torch.Tensor]) -> List[dict]:
    """What int8 costs on each scan: compare() of the fake-int8 output with the teacher's, plus the relative error."""
    costs = []
    with torch.no_grad():
        for (voxels, coords), target in zip(scans, targets):
            output = model(voxels, coords)
            costs.append({**compare(output, target), "relative_error": relative_error(output, target).item()})
    return costs
