"""Tests of helpers.data: the point readers, the synthetic scene and the voxelizer."""
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.config import get_config
from helpers.data.points import read_points
from helpers.data.scene import SCENES, make_scene, synthetic_scene
from helpers.data.voxelize import _as_tensor, _voxel_index, to_sparse_tensor, voxelize
from helpers.errors import WorkbookError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CFG = get_config()  # x, y in [-54, 54), z in [-5, 3), voxels 0.075 x 0.075 x 0.2 m


def count_in_range(points, cfg) -> int:
    """How many points fall inside cfg.point_range (that is, into a voxel of the grid)."""
    return int(_voxel_index(_as_tensor(points), cfg)[1].sum())


def centre(ix, iy, iz, cfg=CFG):
    """The x, y, z centre of voxel (ix, iy, iz)."""
    lo, size = np.array(cfg.point_range[:3]), np.array(cfg.voxel_size)
    return lo + (np.array([ix, iy, iz]) + 0.5) * size


def cloud(*xyz_rows, intensity=None):
    """float32 [N, 5] points from x, y, z rows; intensity = row number unless given."""
    xyz = np.array(xyz_rows, dtype=np.float64).reshape(-1, 3)
    points = np.zeros((len(xyz), 5), np.float32)
    points[:, :3] = xyz
    points[:, 3] = np.arange(len(xyz)) if intensity is None else intensity
    return points


def reference_voxelize(points, cfg):
    """Slow, obvious voxelizer (a Python loop) to compare against."""
    lo, size = np.float32(cfg.point_range[:3]), np.float32(cfg.voxel_size)
    grid = [round((h - l) / s) for l, h, s in zip(cfg.point_range[:3], cfg.point_range[3:], cfg.voxel_size)]
    members = {}  # voxel index -> list of points, in order of first appearance
    for point in points.astype(np.float32):
        index = tuple(int(i) for i in np.floor((point[:3] - lo) / size))
        if all(0 <= i < g for i, g in zip(index, grid)):
            if index in members or len(members) < cfg.max_voxels:
                members.setdefault(index, []).append(point)
    voxels = np.array([np.mean(p[:cfg.max_points_per_voxel], axis=0) for p in members.values()], np.float32)
    coords = np.array([(0, *index) for index in members], np.int32)
    return voxels, coords


def assert_one_line_error(error_info, *fragments):
    message = str(error_info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ----------------------------------------------------------------------------- voxelizer
def test_three_points_in_one_voxel_are_averaged():
    c = centre(700, 720, 20)
    points = cloud(c, c + 0.01, c - 0.02)
    voxels, coords = voxelize(points, CFG)
    assert voxels.dtype == np.float32 and coords.dtype == np.int32
    assert voxels.shape == (1, 5) and coords.tolist() == [[0, 700, 720, 20]]
    np.testing.assert_allclose(voxels[0], points.mean(axis=0), rtol=1e-6)


def test_eleventh_point_in_a_voxel_is_dropped():
    c = centre(3, 4, 5)
    points = cloud(*[c + 0.001 * k for k in range(11)], intensity=[1.0] * 10 + [255.0])
    voxels, _ = voxelize(points, CFG)
    assert len(voxels) == 1
    np.testing.assert_allclose(voxels[0], points[:10].mean(axis=0), rtol=1e-6)
    assert voxels[0, 3] == 1.0  # the 11th point's intensity 255 did not count


def test_range_bounds_lower_kept_upper_dropped():
    points = cloud((-54.0, -54.0, -5.0), (54.0, 0.0, 0.0), (0.0, 54.0, 0.0), (0.0, 0.0, 3.0), (0.0, 0.0, 2.99))
    voxels, coords = voxelize(points, CFG)
    assert coords.tolist() == [[0, 0, 0, 0], [0, 720, 720, 39]]
    assert count_in_range(points, CFG) == 2


def test_float32_rounding_at_the_upper_bound():
    # the largest float32 below 3.0 still gets voxel index 40 in float32 arithmetic: dropped, as in BEVFusion
    just_below = np.nextafter(np.float32(3.0), np.float32(0.0))
    assert count_in_range(cloud((0.0, 0.0, just_below)), CFG) == 0
    # float64 input is rounded to float32 first: 3 - 1e-9 becomes 3.0 and is dropped too
    points64 = np.array([[0.0, 0.0, 3.0 - 1e-9, 1.0, 0.0], [0.0, 0.0, 2.9, 2.0, 0.0]], dtype=np.float64)
    voxels, coords = voxelize(points64, CFG)
    assert voxels.dtype == np.float32 and coords.tolist() == [[0, 720, 720, 39]]
    assert voxels[0, 3] == 2.0


def test_voxels_in_order_of_first_appearance():
    a, b, c = centre(10, 10, 10), centre(5, 5, 5), centre(20, 1, 0)
    voxels, coords = voxelize(cloud(a, b, a, c, b), CFG)
    assert coords[:, 1:].tolist() == [[10, 10, 10], [5, 5, 5], [20, 1, 0]]
    assert voxels[:, 3].tolist() == [1.0, 2.5, 3.0]  # mean intensity = mean row number


def test_max_voxels_keeps_the_first_voxels():
    cfg = replace(CFG, max_voxels=2)
    points = cloud(centre(9, 9, 9), centre(1, 1, 1), centre(5, 5, 5), centre(1, 1, 1))
    voxels, coords = voxelize(points, cfg)
    assert coords[:, 1:].tolist() == [[9, 9, 9], [1, 1, 1]]
    assert voxels[:, 3].tolist() == [0.0, 2.0]


def test_zyx_coords_are_reversed_xyz():
    points = synthetic_scene(5000, seed=3)
    voxels_xyz, coords_xyz = voxelize(points, CFG)
    voxels_zyx, coords_zyx = voxelize(points, CFG.with_layout("zyx"))
    np.testing.assert_array_equal(voxels_xyz, voxels_zyx)
    np.testing.assert_array_equal(coords_zyx[:, 1:], coords_xyz[:, :0:-1])
    assert (coords_zyx[:, 0] == 0).all()


def test_matches_slow_reference_on_crowded_random_points():
    cfg = replace(CFG, max_points_per_voxel=3, max_voxels=40)
    rng = np.random.default_rng(0)
    xyz = centre(0, 0, 0) + rng.uniform(-0.2, 0.5, size=(3000, 3))  # tiny cube: many points per voxel
    points = np.concatenate([xyz, rng.uniform(0, 255, (3000, 1)), rng.uniform(0, 0.45, (3000, 1))], axis=1)
    points = points.astype(np.float32)
    voxels, coords = voxelize(points, cfg)
    expected_voxels, expected_coords = reference_voxelize(points, cfg)
    assert len(coords) == 40
    np.testing.assert_array_equal(coords, expected_coords)
    np.testing.assert_allclose(voxels, expected_voxels, rtol=1e-5, atol=1e-5)


def test_torch_input_gives_the_same_answer_as_numpy():
    points = synthetic_scene(20000, seed=1)
    voxels, coords = voxelize(points, CFG)
    voxels_t, coords_t = voxelize(torch.from_numpy(points), CFG)
    assert isinstance(voxels_t, torch.Tensor) and voxels_t.dtype == torch.float32 and coords_t.dtype == torch.int32
    np.testing.assert_array_equal(coords_t.numpy(), coords)
    np.testing.assert_allclose(voxels_t.numpy(), voxels, rtol=1e-6)
    assert count_in_range(torch.from_numpy(points), CFG) == count_in_range(points, CFG)


def test_no_point_in_range_is_a_one_line_error():
    with pytest.raises(WorkbookError, match="point_range") as error:
        voxelize(cloud((1000.0, 0.0, 0.0), (0.0, 0.0, -900.0)), CFG)
    assert_one_line_error(error, "none of the 2 points", "units")


def test_to_sparse_tensor():
    voxels, coords = voxelize(synthetic_scene(5000), CFG)
    sparse = to_sparse_tensor(voxels, coords, CFG)
    assert sparse.features.shape == (len(voxels), 5) and sparse.features.dtype == torch.float32
    assert sparse.indices.dtype == torch.int32 and sparse.indices.shape == (len(voxels), 4)
    assert list(sparse.spatial_shape) == [1440, 1440, 41] and sparse.batch_size == 1
    zyx = get_config(layout="zyx")
    assert list(to_sparse_tensor(voxels, coords, zyx).spatial_shape) == [41, 1440, 1440]


# ----------------------------------------------------------------------------- readers
def test_nuscenes_bin_round_trip(tmp_path):
    points = synthetic_scene(1000)
    path = tmp_path / "scan.bin"
    points.tofile(path)
    read = read_points(path)
    assert read.dtype == np.float32 and read.shape == (1000, 5)
    np.testing.assert_array_equal(read, points)


def test_kitti_bin_gets_a_zero_time_lag(tmp_path):
    kitti = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "000000.bin"
    kitti.tofile(path)
    read = read_points(path, columns=4)
    assert read.shape == (3, 5)
    np.testing.assert_array_equal(read[:, :4], kitti)
    assert (read[:, 4] == 0).all()


@pytest.mark.parametrize("n_columns", [4, 5])
def test_npy(tmp_path, n_columns):
    points = np.random.default_rng(0).normal(size=(7, n_columns))  # float64 on purpose
    path = tmp_path / "scan.npy"
    np.save(path, points)
    read = read_points(path)
    assert read.dtype == np.float32 and read.shape == (7, 5)
    np.testing.assert_allclose(read[:, :n_columns], points, rtol=1e-6)


def write_bad(tmp_path, case):
    """A broken scan file for each error case; returns its path."""
    path = tmp_path / {"missing": "nope.bin", "size": "kitti.bin", "ndim": "flat.npy", "columns": "three.npy",
                       "suffix": "scan.pcd", "nan": "nan.bin", "empty_bin": "empty.bin",
                       "empty_npy": "empty.npy", "ints": "ints.npy"}[case]
    if case == "size":
        np.zeros((3, 4), np.float32).tofile(path)  # 48 bytes: not a multiple of 20
    elif case == "ndim":
        np.save(path, np.zeros(10))
    elif case == "columns":
        np.save(path, np.zeros((10, 3)))
    elif case == "suffix":
        path.write_text("# .PCD v0.7\n")
    elif case == "nan":
        points = np.zeros((5, 5), np.float32)
        points[1, 0], points[3, 4] = np.nan, np.inf
        points.tofile(path)
    elif case == "empty_bin":
        path.write_bytes(b"")
    elif case == "empty_npy":
        np.save(path, np.zeros((0, 5), np.float32))
    elif case == "ints":
        np.save(path, np.zeros((4, 5), np.int64))
    return path


@pytest.mark.parametrize("case, fragments", [
    ("missing", ["not found"]),
    ("size", ["48 bytes", "20-byte row", "columns=4"]),
    ("ndim", ["shape (10,)", "2-D float array with 4 or 5 columns"]),
    ("columns", ["shape (10, 3)", "4 or 5 columns"]),
    ("suffix", ["'.pcd'", ".bin", ".npy"]),
    ("nan", ["2 of 5 rows", "NaN or Inf"]),
    ("empty_bin", ["zero points"]),
    ("empty_npy", ["zero points"]),
    ("ints", ["int64", "float array"]),
])
def test_reader_errors_name_the_file_in_one_line(tmp_path, case, fragments):
    path = write_bad(tmp_path, case)
    with pytest.raises(WorkbookError, match=re.escape(path.name)) as error:
        read_points(path)
    assert_one_line_error(error, str(path), *fragments)


def test_bad_columns_argument(tmp_path):
    path = tmp_path / "scan.bin"
    np.zeros((2, 5), np.float32).tofile(path)
    with pytest.raises(WorkbookError, match="scan.bin") as error:
        read_points(path, columns=3)
    assert_one_line_error(error, "columns=3", "4 (KITTI) or 5 (nuScenes)")


# ----------------------------------------------------------------------------- synthetic scene
def test_scene_is_deterministic():
    first, again, other = synthetic_scene(20000, seed=0), synthetic_scene(20000, seed=0), synthetic_scene(20000, 1)
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


@pytest.mark.parametrize("n_points", [5000, SCENES["default"], SCENES["full"]])
def test_scene_statistics_are_plausible(n_points):
    points = synthetic_scene(n_points)
    assert points.dtype == np.float32 and points.shape[1] == 5
    assert abs(len(points) - n_points) <= 0.1 * n_points
    assert np.isfinite(points).all()
    distance = np.linalg.norm(points[:, :3], axis=1)
    assert (distance < 60).mean() > 0.9
    assert distance.max() <= 70 + 5.0 * 0.45 + 0.1  # 70 m range, from up to 2.25 m back in older sweeps
    assert (np.abs(points[:, 2] + 1.8) < 0.3).mean() > 0.3  # a large ground population
    assert (points[:, 2] > 0.5).mean() > 0.02  # walls, poles and trees stand up
    assert points[:, 3].min() >= 0 and points[:, 3].max() <= 255
    assert points[:, 4].min() == 0 and points[:, 4].max() <= 0.45 + 1e-6
    assert count_in_range(points, CFG) > 0.9 * len(points)


def test_full_scene_merges_ten_sweeps():
    time_lags = np.unique(make_scene("full")[:, 4])
    np.testing.assert_allclose(time_lags, np.arange(10) * 0.05, atol=1e-6)


def test_make_scene_names():
    assert len(make_scene("default")) == SCENES["default"]
    with pytest.raises(WorkbookError, match="unknown scene 'huge'"):
        make_scene("huge")


# ----------------------------------------------------------------------------- real nuScenes data
needs_data = pytest.mark.skipif(not (DATA / "nuscenes_10sweeps_points.bin").is_file(), reason="no shared/data")


@needs_data
def test_real_nuscenes_points_known_answers():
    points = read_points(DATA / "nuscenes_10sweeps_points.bin")
    assert points.shape == (271156, 5)
    assert count_in_range(points, CFG) == 236511
    voxels, coords = voxelize(points, CFG)
    # float32 index arithmetic, exactly as BEVFusion's CUDA kernel floor((p - min) / size) does
    assert len(voxels) == 105086
    assert (coords[:, 1:].max(axis=0) <= [1439, 1439, 39]).all() and coords.min() >= 0  # per axis


@needs_data
def test_float64_arithmetic_differs_from_the_voxelizer_only_at_voxel_edges():
    """The README's 105,127 voxels come from float64 arithmetic; the voxelizer, in float32 like BEVFusion's
    kernel, makes 105,086: every point whose voxel differs lies within float32 rounding of a voxel edge."""
    points = read_points(DATA / "nuscenes_10sweeps_points.bin")
    index32, inside32 = _voxel_index(torch.from_numpy(points), CFG)  # the voxelizer's own index arithmetic
    index32, inside32 = index32.numpy(), inside32.numpy()
    lo, size = np.array(CFG.point_range[:3]), np.array(CFG.voxel_size)
    index64 = np.floor((points[:, :3].astype(np.float64) - lo) / size)  # [N, 3]
    inside64 = ((index64 >= 0) & (index64 < CFG.grid_counts)).all(axis=1)
    assert len(np.unique(index64[inside64], axis=0)) == 105127
    assert len(voxelize(points, CFG)[0]) == len(np.unique(index32[inside32], axis=0)) == 105086
    differ = (index32 != index64).any(axis=1) & (inside32 | inside64)  # [N]
    assert 0 < differ.sum() < 0.02 * len(points)  # about 1% of the points, in 41 voxels
    offset = (points[differ, :3].astype(np.float64) - lo) / size  # in voxels: next to a whole number
    assert (np.abs(offset - np.round(offset)).min(axis=1) < 1e-4).all()


@needs_data
def test_shipped_bevfusion_voxels_fit_our_grid():
    voxels = np.load(DATA / "bevfusion_voxels_17748x5_fp16.npy").astype(np.float64)  # [M, 5]
    coords = np.load(DATA / "bevfusion_coors_17748x4_bxyz_int32.npy")  # [M, 4] batch, x, y, z
    assert (coords[:, 0] == 0).all()
    assert (coords[:, 1:] >= 0).all() and (coords[:, 1:] < CFG.grid_xyz).all()
    lo, size = np.array(CFG.point_range[:3]), np.array(CFG.voxel_size)
    low_edge = lo + coords[:, 1:] * size  # [M, 3]
    tolerance = 2e-3 * np.abs(voxels[:, :3]) + 1e-3  # fp16 rounding of the mean
    assert (voxels[:, :3] >= low_edge - tolerance).all()
    assert (voxels[:, :3] <= low_edge + size + tolerance).all()
    # a grid shifted by half a voxel would not fit
    shifted = lo + (coords[:, 1:] + 0.5) * size
    assert not (voxels[:, :3] >= shifted - tolerance).all()
