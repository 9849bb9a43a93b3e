"""Shared fixtures: small inputs that keep the CPU suite fast, and the real scans when present."""
import os
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a 2-core machine a spinning pytest process
# slows the notebook kernels and JupyterLab it starts by 10x. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"  # real nuScenes scans beside the checkout (never committed)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def real_file(name: str) -> Path:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is not present (real scans are optional)")
    return path


def random_voxels(cfg, n=3000, seed=0, region=64):
    """`n` unique voxels clustered in a `region`^2 x 20 patch of the grid: small but connected."""
    rng = np.random.default_rng(seed)
    gx, gy, gz = cfg.grid_xyz
    xyz = np.stack([rng.integers(gx // 2 - region // 2, gx // 2 + region // 2, 4 * n),
                    rng.integers(gy // 2 - region // 2, gy // 2 + region // 2, 4 * n),
                    rng.integers(gz // 2 - 10, gz // 2 + 10, 4 * n)], 1)
    xyz = np.unique(xyz, axis=0)[:n]
    xyz = xyz[rng.permutation(len(xyz))]
    order = xyz if cfg.layout == "xyz" else xyz[:, ::-1]
    coords = np.concatenate([np.zeros((len(xyz), 1), np.int64), order], 1).astype(np.int32)
    voxels = rng.normal(size=(len(xyz), cfg.in_channels)).astype(np.float32)
    return torch.from_numpy(voxels), torch.from_numpy(coords)


def pytest_collection_modifyitems(config, items):
    """The browser test is the slowest: run it last, after everything it builds on has passed."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
