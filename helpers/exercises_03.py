"""The checks of notebook 03's exercises (see helpers/exercises.py for how a check cell works).

    1  int8_codes(x, amax)                      the int8 numbers a per-tensor quantizer makes of x
    2  folded_bias(conv_bias, mean, var, gamma, beta, eps)   a conv's bias after BatchNorm folding
    3  predict_conv_attributes(paths)           activation, precision, output_precision of every conv
    4  zyx_output_grid(grid_xyz, kernel, stride, padding)    a strided conv's output grid in a zyx graph

Each check draws its own inputs at random (tensors, amax, BatchNorm statistics, network depths, grids),
compares with what the workbook's own code computes, and names the usual mistake when it sees one.
"""
import spconv.pytorch as spconv
import torch
from pytorch_quantization.tensor_quant import tensor_quant

from helpers.config import SCNConfig
from helpers.exercises import Exercise, NotYet, expect, expect_equal, fresh_random
from helpers.model import build_scn, place
from helpers.quant.fuse import fuse
from helpers.quant.modules import QuantSparseConv, quantize_scn
from helpers.quant.precision import set_precision
from helpers.trace.handlers import conv_output_shape

PROTECT = ()  # these exercises patch nothing


def as_tensor(value, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise NotYet(f"{what} should return a torch.Tensor", "torch.Tensor", type(value).__name__)
    return value.detach().double()


def generator(rng) -> torch.Generator:
    return torch.Generator().manual_seed(rng.randint(0, 2**31 - 1))


# ---------------------------------------------------------------------------------------------------
# Exercise 1: the int8 codes of a tensor.

def close_codes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal codes, but for one value that sits on a rounding tie in one precision and not the other."""
    return a.shape == b.shape and (a - b).abs().max() <= 1 and int((a != b).sum()) <= 1


def check_int8_codes(int8_codes):
    rng = fresh_random()
    for _ in range(3):
        amax = round(rng.uniform(0.5, 20.0), 3)
        g = generator(rng)
        x = (torch.rand(64, generator=g) * 2.6 - 1.3) * amax  # some values beyond +-amax: they clip
        x[0], x[1] = amax * 1.37, -amax * 1.41
        expected = tensor_quant(x, torch.tensor(amax))[0].double()  # pytorch-quantization itself
        call = f"int8_codes(x, amax={amax})"
        got = as_tensor(int8_codes(x.clone(), amax), call)
        expect_equal(list(got.shape), list(x.shape), f"the shape of {call}", hint="one code per value of x")
        if close_codes(got, expected):
            continue
        scale = 127.0 / amax
        x64 = x.double()
        diagnoses = [
            (torch.round(x64 * scale), "values beyond +-amax are not clipped",
             "int8 stops at +-127: clamp the codes (torch.clamp) after rounding"),
            (torch.clamp(torch.round(x64 * 128.0 / amax), -127, 127), "the scale uses 128",
             "pytorch-quantization's int8 is symmetric, -127..127: the scale is 127 / amax"),
            (torch.clamp(torch.round(x64 * 255.0 / amax), -127, 127), "the scale uses 255 (that is uint8)",
             "signed int8 covers -amax..amax with -127..127: the scale is 127 / amax"),
            (torch.clamp(torch.trunc(x64 * scale), -127, 127), "the codes are truncated, not rounded",
             "int(...) or trunc cuts toward zero; quantization rounds to the nearest code (torch.round)"),
            (torch.clamp(torch.floor(x64 * scale), -127, 127), "the codes are floored, not rounded",
             "floor moves every value down; quantization rounds to the nearest code (torch.round)"),
            (torch.clamp(torch.round(x64 / scale), -127, 127), "x is divided by the scale instead of multiplied",
             "code = round(x * 127 / amax): amax maps to 127"),
            (torch.clamp(torch.round(x64 * scale), -128, 127), "the codes reach -128",
             "the quantizer is narrow-range: -127..127, so that -amax and amax are symmetric"),
        ]
        for wrong, what, hint in diagnoses:
            if close_codes(got, wrong):
                raise NotYet(f"{call}: {what}", expected[:6].tolist(), got[:6].tolist(), hint)
        bad = int((got != expected).nonzero()[0])
        raise NotYet(f"{call}: the code of x[{bad}] = {float(x[bad]):.4f}", float(expected[bad]), float(got[bad]),
                     "code = round(x * 127 / amax), then clamp to -127..127")


# ---------------------------------------------------------------------------------------------------
# Exercise 2: one folded conv's bias, from the BatchNorm statistics.

def check_folded_bias(folded_bias):
    rng = fresh_random()
    for _ in range(3):
        g = generator(rng)
        channels = rng.randint(3, 9)
        conv_bias = torch.randn(channels, generator=g) * 0.1  # BEVFusion's are zero; a general answer keeps them
        mean = torch.randn(channels, generator=g) * 0.5
        var = torch.rand(channels, generator=g) + 0.5
        eps = rng.choice([1e-3, 1e-5, 1e-2])
        var[0] = eps * rng.uniform(0.5, 2.0)  # a nearly dead channel: there eps matters
        gamma = torch.rand(channels, generator=g) + 0.5
        beta = torch.randn(channels, generator=g) * 0.2
        args = [t.clone() for t in (conv_bias, mean, var, gamma, beta)] + [eps]
        got = as_tensor(folded_bias(*args), "folded_bias(...)")
        c, m, v, ga, b = (t.double() for t in (conv_bias, mean, var, gamma, beta))
        scale = ga / torch.sqrt(v + eps)
        expected = (c - m) * scale + b  # what helpers.quant.fuse.fold_bn writes into the conv's bias
        expect_equal(list(got.shape), [channels], "the shape of the folded bias", hint="one bias per output channel")
        if torch.allclose(got, expected, rtol=1e-4, atol=1e-6):
            continue
        diagnoses = [
            ((c - m) * ga / torch.sqrt(v) + b, "eps is missing",
             "BatchNorm divides by sqrt(var + eps); with a small variance eps changes the result"),
            ((c - m) * ga / (v + eps) + b, "divided by the variance, not by the standard deviation",
             "the scale is gamma / sqrt(var + eps)"),
            ((c - m) * scale, "beta is missing", "BatchNorm ends by adding beta"),
            (-m * scale + b, "the conv's own bias is missing",
             "the conv's bias is part of what the conv outputs, so it passes through the BatchNorm too"),
            (c - m * scale + b, "the conv's own bias is not scaled",
             "the BatchNorm scales everything the conv outputs, its bias included"),
            ((c + m) * scale + b, "the mean is added, not subtracted", "BatchNorm subtracts the running mean"),
            ((c - m) / scale + b, "divided by the scale instead of multiplied", "the scale is gamma / sqrt(var + eps)"),
        ]
        for wrong, what, hint in diagnoses:
            if torch.allclose(got, wrong, rtol=1e-4, atol=1e-6):
                raise NotYet(f"folded bias of {channels} channels (eps={eps}): {what}",
                             [round(float(e), 4) for e in expected[:4]], [round(float(e), 4) for e in got[:4]], hint)
        raise NotYet(f"folded bias of {channels} channels (eps={eps})", [round(float(e), 4) for e in expected[:4]],
                     [round(float(e), 4) for e in got[:4]],
                     "take BatchNorm's formula (section 3, BatchNorm folding) and ask what it makes of the part of "
                     "the conv's output that does not depend on the input")


# ---------------------------------------------------------------------------------------------------
# Exercise 3: activation and precision attributes of every conv of a network you have not seen.

def random_config(rng) -> SCNConfig:
    """BEVFusion's shape (4 stages, 3 down-sampling convs) with 1-3 basic blocks per stage and narrow channels."""
    channels, paddings = [], []
    for i in range(4):
        blocks, width = rng.randint(1, 3), 4 * (i + 1)
        if i < 3:  # a down-sampling conv ends every stage but the last
            channels.append((width,) * blocks + (4 * (i + 2),))
            paddings.append((0,) * blocks + ((1, 1, 0) if i == 2 else 1,))
        else:
            channels.append((width,) * blocks)
            paddings.append((0,) * blocks)
    return SCNConfig(base_channels=4, encoder_channels=tuple(channels), encoder_paddings=tuple(paddings),
                     output_channels=8)


def conv_attributes(cfg: SCNConfig, g: torch.Generator):
    """(paths, [(activation, precision, output_precision)]) of cfg's network after the workbook's preparation."""
    model = place(build_scn(cfg), "cpu")
    n = 200
    coords = torch.stack([torch.zeros(n, dtype=torch.int32)] +
                         [torch.randint(0, s, (n,), generator=g, dtype=torch.int32) for s in cfg.sparse_shape], 1)
    coords = torch.unique(coords, dim=0)
    voxels = torch.randn(len(coords), cfg.in_channels, generator=g)
    set_precision(fuse(quantize_scn(model), voxels, coords))
    convs = [(p, m) for p, m in model.named_modules() if isinstance(m, QuantSparseConv)]
    return [p for p, _ in convs], [(m.activation, m.precision, m.output_precision) for _, m in convs]


def check_conv_attributes(predict_conv_attributes):
    rng = fresh_random()
    for _ in range(2):
        cfg = random_config(rng)
        paths, expected = conv_attributes(cfg, generator(rng))
        got = predict_conv_attributes(list(paths))
        got = [tuple(x) for x in got] if isinstance(got, (list, tuple)) else got
        blocks = [sum(1 for c in stage if c == stage[0]) for stage in cfg.encoder_channels]
        what = f"a network of {len(paths)} convs ({'/'.join(map(str, blocks))} basic blocks per stage)"
        expect(isinstance(got, list) and len(got) == len(paths),
               f"{what}: one (activation, precision, output_precision) per path", len(paths),
               len(got) if isinstance(got, list) else type(got).__name__,
               hint="the network changes from check to check: derive each answer from its path")
        for field, name in enumerate(("activation", "precision", "output_precision")):  # in that order
            wrong = [(p, e[field], a[field] if isinstance(a, tuple) and len(a) == 3 else a)
                     for p, e, a in zip(paths, expected, got) if not (isinstance(a, tuple) and a[field] == e[field])]
            if wrong:
                path, e, a = wrong[0]
                raise NotYet(f"{what}: {name} of {path}" + (f" (and {len(wrong) - 1} more convs)" if len(wrong) > 1
                                                            else ""), e, a, hint_for(name, path))


def hint_for(name: str, path: str) -> str:
    if name == "activation" and path.endswith("conv2"):
        return ("a ReLU is fused into the conv whose output it reads; a basic block's conv2 feeds the residual "
                "add, and the ReLU after the add stays a Relu node")
    if name == "activation":
        return "conv -> BN -> ReLU: once the BN is folded, that ReLU reads the conv's output and is fused into it"
    if name == "precision":
        return "only the first conv reads fp16 (the raw voxel features); every other layer reads int8"
    return "only the last conv writes fp16 (the BEV map for the detection head); every other layer writes int8"


# ---------------------------------------------------------------------------------------------------
# Exercise 4: the output grid of a down-sampling conv in a zyx graph.

def check_zyx_output_grid(zyx_output_grid):
    rng = fresh_random()
    for _ in range(4):
        grid = [rng.choice([1440, 1024, 720, 360, 180, 1600]), rng.choice([1440, 1024, 720, 360, 1408]),
                rng.choice([41, 21, 11, 5, 40])]
        kernel = rng.choice([[3, 3, 3], [1, 1, 3], [3, 3, 1]])
        stride = rng.choice([[2, 2, 2], [1, 1, 2], [2, 2, 1]])
        padding = rng.choice([[1, 1, 1], [1, 1, 0], [0, 0, 0], [0, 0, 1]])
        conv = spconv.SparseConv3d(4, 4, kernel[::-1], stride=stride[::-1], padding=padding[::-1])  # a zyx conv
        expected = conv_output_shape(conv, grid[::-1])
        call = f"zyx_output_grid({grid}, kernel={kernel}, stride={stride}, padding={padding})"
        got = zyx_output_grid(list(grid), list(kernel), list(stride), list(padding))
        got = list(got) if isinstance(got, (list, tuple, torch.Size)) else got
        if got == expected:
            continue
        xyz = [(n + 2 * p - (k - 1) - 1) // s + 1 for n, k, s, p in zip(grid, kernel, stride, padding)]
        if got == xyz:
            raise NotYet(f"{call}: the axes are in xyz order", expected, got,
                         "a zyx graph lists z first: reverse the grid and every per-axis setting")
        mixed = [(n + 2 * p - (k - 1) - 1) // s + 1 for n, k, s, p in zip(grid[::-1], kernel, stride, padding)]
        if got == mixed:
            raise NotYet(f"{call}: the grid is reversed but kernel, stride and padding are not", expected, got,
                         "in zyx every per-axis list is reversed, not only the grid")
        raise NotYet(f"{call}", expected, got,
                     "per axis: (n + 2 * padding - (kernel - 1) - 1) // stride + 1, rounding down")


EXERCISES = [
    Exercise(1, "int8_codes: what a per-tensor int8 quantizer makes of a tensor", check_int8_codes, ("int8_codes",),
             hints=(
                 "the scale maps amax onto the largest code; what becomes of values beyond ±amax?",
                 "scale, round to the nearest integer (not towards zero), then keep the codes in the narrow "
                 "int8 range of section 3",
                 "code = round(x * 127 / amax), kept within -127..127 (torch.round, torch.clamp)",
             )),
    Exercise(2, "folded_bias: a conv's bias after BatchNorm folding", check_folded_bias, ("folded_bias",), hints=(
        "what does the BatchNorm do to the part of the conv's output that does not depend on the input?",
        "the conv's bias goes through the BatchNorm like any output: the mean comes off, the scale multiplies, "
        "beta is added",
        "the scale is gamma / sqrt(var + eps), the same one that multiplies the weights",
    )),
    Exercise(3, "predict_conv_attributes: activation and precision of every conv", check_conv_attributes,
             ("predict_conv_attributes",), hints=(
                 "look at what reads each conv's output; and only the two ends of the network are special",
                 "a ReLU is fused into the conv whose output it reads, and a conv that feeds a residual add has "
                 "no ReLU of its own",
                 "a basic block's conv2 feeds the add; the first conv reads the raw (fp16) voxel features and the "
                 "last one writes the fp16 BEV map; every other input and output is int8",
             )),
    Exercise(4, "zyx_output_grid: a strided conv's output grid in a zyx graph", check_zyx_output_grid,
             ("zyx_output_grid",), hints=(
                 "compute each axis as a dense conv does, then give the axes in z, y, x order",
                 "the size formula of a dense conv (torch.nn.Conv3d's documentation), axis by axis, with that "
                 "axis's kernel, stride and padding; the arguments come in x, y, z order",
                 "out = (n + 2 * padding - (kernel - 1) - 1) // stride + 1 for x, y and z, then reverse the list",
             )),
]
