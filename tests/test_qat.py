"""helpers/quant/qat.py: a few steps of fine-tuning lower the int8 error on the tuning scans, measured here with
numpy; only the chosen biases change; the quantizers' amax and every requires_grad stay as they were."""
import numpy as np
import pytest
import torch

from helpers.config import get_config
from helpers.data.scene import make_scene
from helpers.data.voxelize import voxelize
from helpers.errors import WorkbookError
from helpers.model import build_scn
from helpers.pipeline import prepare_scn
from helpers.quant.modules import named_quantizers
from helpers.quant.precision import set_quantizers
from helpers.quant.qat import LAST_LAYERS, finetune, float_outputs, int8_costs


def numpy_relative_error(output: torch.Tensor, target: torch.Tensor) -> float:
    a, b = output.detach().numpy().astype(np.float64), target.detach().numpy().astype(np.float64)
    return float(((a - b) ** 2).sum() / (b ** 2).sum())


@pytest.fixture(scope="module")
def tuned():
    torch.manual_seed(0)
    cfg = get_config()
    scans = [voxelize(torch.from_numpy(make_scene("small", seed=s)[::8]), cfg) for s in (0, 1)]  # ~2,400 voxels
    model = prepare_scn(build_scn(cfg), scans, progress=False)
    targets = float_outputs(model, scans)
    set_quantizers(model, False)  # the float network by hand: every quantizer off, then the int8 ones on again
    with torch.no_grad():
        float_by_hand = [model(v, c) for v, c in scans]
    set_quantizers(model, True)
    with torch.no_grad():
        before = [model(v, c) for v, c in scans]
    parameters = {name: p.detach().clone() for name, p in model.named_parameters()}
    amax = {f"{path}/{kind}": q.amax.clone() for path, kind, q in named_quantizers(model) if q.amax is not None}
    losses = finetune(model, scans, targets, steps=6, lr=1e-4)
    with torch.no_grad():
        after = [model(v, c) for v, c in scans]
    return dict(model=model, scans=scans, targets=targets, float_by_hand=float_by_hand, before=before, after=after,
                losses=losses,
                parameters=parameters, amax=amax)


def test_the_teacher_is_the_float_network(tuned):
    for target, by_hand, fake_int8 in zip(tuned["targets"], tuned["float_by_hand"], tuned["before"]):
        assert target.shape == (1, 256, 180, 180) and torch.equal(target, by_hand)
        assert numpy_relative_error(fake_int8, target) > 0  # int8 differs from the teacher: something to tune


def test_finetuning_lowers_the_int8_error_on_the_tuning_scans(tuned):
    start = [numpy_relative_error(o, t) for o, t in zip(tuned["before"], tuned["targets"])]
    end = [numpy_relative_error(o, t) for o, t in zip(tuned["after"], tuned["targets"])]
    assert tuned["losses"][0] == pytest.approx(start[0], rel=1e-4)  # the first step's loss is the untuned error
    assert all(e < s for e, s in zip(end, start)), (start, end)
    costs = int8_costs(tuned["model"], tuned["scans"], tuned["targets"])
    assert [c["relative_error"] for c in costs] == pytest.approx(end, rel=1e-4)
    assert all(0.99 < c["cosine"] <= 1 and c["max_abs"] > 0 for c in costs)


def test_only_the_chosen_biases_change_and_the_quantizers_keep_their_amax(tuned):
    model = tuned["model"]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), tuned["parameters"][n])}
    assert changed and all(n.endswith(".bias") and n.startswith(LAST_LAYERS) for n in changed), sorted(changed)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == {n: True for n in tuned["parameters"]}
    amax = {f"{path}/{kind}": q.amax for path, kind, q in named_quantizers(model) if q.amax is not None}
    assert amax.keys() == tuned["amax"].keys() and all(torch.equal(amax[k], tuned["amax"][k]) for k in amax)


def test_bad_input_is_named(tuned):
    model, scans, targets = tuned["model"], tuned["scans"], tuned["targets"]
    with pytest.raises(WorkbookError, match="no parameter to tune under \\['head'\\]"):
        finetune(model, scans, targets, layers=("head",))
    with pytest.raises(WorkbookError, match="one target per scan, got 2 scans and 1 targets"):
        finetune(model, scans, targets[:1])
