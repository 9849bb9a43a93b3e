"""What int8 costs, and whether the file's int8 re-run is the fake-quant model, on several inputs (CPU, fp32).

    python tools/int8_cost.py                       # synthetic full scene + the real scans in ../shared/data
    python tools/int8_cost.py --inputs keyframe     # one of: full, keyframe, sweeps

For each input: prepare and calibrate the SCN as `python -m helpers.export` does (random seeded weights;
the synthetic scene calibrates on 4 synthetic scenes, a real scan on itself), then
  int8 cost          fake-quant vs float output, conv_input kept fp16 (what the file asks of the engine)
  conv0 quantized    the same with conv_input's quantizers on too (the figure before issue 18)
  executor           the file's int8-faithful re-run vs the fake-quant model (max abs; 0 = bit for bit)
  int32 accumulation the executor summing the int8 integers exactly vs its fp32 sums: per int8 conv on
                     the same input (worst relative difference), and end to end (max abs)
  one shared scale   conv_input's calibrated amax, and what it would do to each voxel column
"""
import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from helpers.check import int8 as executor  # noqa: E402
from helpers.check.compare import compare  # noqa: E402
from helpers.config import get_config  # noqa: E402
from helpers.data.points import read_points  # noqa: E402
from helpers.data.scene import make_scene  # noqa: E402
from helpers.data.voxelize import voxelize  # noqa: E402
from helpers.model import build_scn, place  # noqa: E402
from helpers.pipeline import export_scn, prepare_scn  # noqa: E402
from helpers.quant.cost import int8_cost  # noqa: E402
from helpers.quant.reference import reference_run  # noqa: E402
from helpers.viz.int8 import shared_scale_rows  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def inputs(cfg, names):
    for name in names:
        if name == "full":
            scans = [voxelize(torch.from_numpy(make_scene("full", seed=s)), cfg) for s in range(4)]
            yield "synthetic full scene (seed 0; calibrated on seeds 0-3)", scans
        elif name == "keyframe":
            voxels = np.load(DATA / "bevfusion_voxels_17748x5_fp16.npy").astype(np.float32)
            coords = np.load(DATA / "bevfusion_coors_17748x4_bxyz_int32.npy")
            yield "nuScenes key frame, BEVFusion's voxels", [(torch.from_numpy(voxels), torch.from_numpy(coords))]
        elif name == "sweeps":
            points = read_points(DATA / "nuscenes_10sweeps_points.bin")
            yield "nuScenes 10-sweep scan", [voxelize(torch.from_numpy(points), cfg)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = ["full", "keyframe", "sweeps"]
    p.add_argument("--inputs", nargs="*", default=names, choices=names, help="which inputs (default: all three)")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = get_config()
    model = place(build_scn(cfg), "cpu")
    for label, batches in inputs(cfg, args.inputs):
        t0 = time.perf_counter()
        voxels, coords = batches[0]
        prepared = prepare_scn(model, batches, progress=False)
        x = voxels.half().float()  # the graph input is fp16
        new = int8_cost(prepared, x, coords)
        old = int8_cost(prepared, x, coords, quantize_fp16_layers=True)
        result = export_scn(prepared, voxels, coords)
        reference = reference_run(prepared, voxels, coords)
        rerun = executor.run_file(result.model, voxels, coords)
        exact = compare(reference.output_int8, rerun)
        int32 = compare(rerun, executor.run_file(result.model, voxels, coords, accumulate="int32"))
        worst = max(executor.accumulation_rows(result.model, voxels, coords), key=lambda r: r["relative"])
        print(f"{label}: {len(voxels):,} voxels ({time.perf_counter() - t0:.0f} s)")
        print(f"  int8 cost, conv_input fp16 (now):       cosine {new['cosine']:.6f}, max abs {new['max_abs']:.4f}")
        print(f"  int8 cost, conv_input quantized anyway: cosine {old['cosine']:.6f}, max abs {old['max_abs']:.4f}")
        print(f"  file int8 re-run vs fake-quant model:   cosine {exact['cosine']:.6f}, max abs {exact['max_abs']:.3g}")
        print(f"  int32 accumulation vs fp32 sums, per conv: worst relative {worst['relative']:.2g} ({worst['node']})")
        print(f"  int32 accumulation vs fp32 sums, output: cosine {int32['cosine']:.6f}, "
              f"max abs {int32['max_abs']:.3g}")
        amax = float(prepared.conv_input[0].input_quantizer.amax)
        print(f"  conv_input amax {amax:.1f} (step {amax / 127:.2f}):")
        for row in shared_scale_rows(voxels, amax):
            print(f"    {row['column']:<13} {row['range']:>17}: {row['distinct before']:>7,} -> "
                  f"{row['distinct after']:>3} distinct values, non-zero turned 0: {row['non-zero turned 0']}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
