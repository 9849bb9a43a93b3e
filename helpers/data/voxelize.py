"""Points in, sparse voxels out: BEVFusion's hard voxelizer, and the spconv tensor around its output."""
import numpy as np
import spconv.pytorch as spconv
import torch

from helpers.errors import WorkbookError

# ----------------------------------------------------------------------------- voxelizer
def _voxel_index(points: torch.Tensor, cfg):
    """Float32 voxel index of every point, [N, 3] (x, y, z), and whether it lies in the grid, [N]."""
    lo = torch.tensor(cfg.point_range[:3], dtype=torch.float32, device=points.device)  # [3]
    size = torch.tensor(cfg.voxel_size, dtype=torch.float32, device=points.device)  # [3]
    grid = torch.tensor(cfg.grid_counts, dtype=torch.float32, device=points.device)  # [3]
    # float32 division, exactly like BEVFusion's CUDA kernel floorf((p - min) / size): float64 maths
    # would put points lying on voxel edges into the neighbouring voxel
    index = torch.floor((points[:, :3].float() - lo) / size)  # [N, 3]
    inside = ((index >= 0) & (index < grid)).all(dim=1)  # [N]; NaN compares False, so it is outside
    return index, inside


def _as_tensor(points) -> torch.Tensor:
    """Points as a float32 torch tensor [N, C] on their own device (numpy arrays go to the CPU)."""
    tensor = points if isinstance(points, torch.Tensor) else torch.as_tensor(np.asarray(points))
    if tensor.ndim != 2 or tensor.shape[1] < 3:
        raise WorkbookError(f"points of shape {tuple(tensor.shape)} cannot be voxelized; expected [N, 5]")
    return tensor.float()  # float64 input is rounded to float32 first, as BEVFusion sees it


def voxelize(points, cfg):
    """BEVFusion's hard voxelizer: voxels float32 [M, 5] (mean of up to max_points_per_voxel points)
    and coords int32 [M, 4] = (0, x, y, z), or (0, z, y, x) for cfg.layout == 'zyx'. A network with
    fewer input channels (OpenPCDet's KITTI backbones: 4) averages only the first cfg.in_channels columns.

    Voxels come in the order their first point appears; numpy in gives numpy out, a torch tensor
    gives torch tensors on its device.
    """
    is_numpy = not isinstance(points, torch.Tensor)
    points = _as_tensor(points)  # [N, C]
    points = points[:, :getattr(cfg, "in_channels", points.shape[1])]  # [N, C_in]: x, y, z, intensity(, time-lag)
    index, inside = _voxel_index(points, cfg)  # [N, 3], [N]
    if not bool(inside.any()):
        raise WorkbookError(f"none of the {len(points)} points lies inside point_range {tuple(cfg.point_range)} m; "
                            f"expected metres in the ego frame; check the units and the coordinate frame")
    points, index = points[inside], index[inside].long()  # [K, C], [K, 3]
    n_x, n_y, _ = cfg.grid_counts
    key = (index[:, 2] * n_y + index[:, 1]) * n_x + index[:, 0]  # [K] one number per voxel
    unique_keys, voxel_of_point = torch.unique(key, return_inverse=True)  # [U], [K] (sorted by key)
    point_number = torch.arange(len(key), device=key.device)  # [K]
    first_point = torch.full_like(unique_keys, len(key)).scatter_reduce(
        0, voxel_of_point, point_number, reduce="amin")  # [U] first point of each voxel
    first_point, order = torch.sort(first_point)  # [U] voxels in order of first appearance
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=key.device))  # [U]
    voxel_id = rank[voxel_of_point]  # [K] 0 = the voxel seen first
    # position of each point inside its voxel (0 for its first point), from a stable sort by voxel
    sorted_id, by_voxel = torch.sort(voxel_id, stable=True)  # [K], [K]
    counts = torch.bincount(voxel_id, minlength=len(order))  # [U] points per voxel
    starts = torch.cumsum(counts, dim=0) - counts  # [U] where each voxel begins in the sorted list
    slot = torch.empty_like(voxel_id)
    slot[by_voxel] = point_number - starts[sorted_id]  # [K]
    n_voxels = min(len(order), cfg.max_voxels)
    keep = (slot < cfg.max_points_per_voxel) & (voxel_id < n_voxels)  # [K]
    sums = torch.zeros(n_voxels, points.shape[1], dtype=torch.float32, device=points.device)  # [M, C]
    sums.index_add_(0, voxel_id[keep], points[keep])
    kept = torch.bincount(voxel_id[keep], minlength=n_voxels)  # [M] points averaged per voxel
    voxels = sums / kept[:, None].float()  # [M, C]
    xyz = index[first_point[:n_voxels]]  # [M, 3] voxel index of each voxel's first point
    if cfg.layout == "zyx":
        xyz = xyz.flip(1)  # (z, y, x)
    coords = torch.cat([torch.zeros_like(xyz[:, :1]), xyz], dim=1).int()  # [M, 4]
    return (voxels.numpy(), coords.numpy()) if is_numpy else (voxels, coords)


def to_sparse_tensor(voxels, coords, cfg, device="cpu", dtype=torch.float32):
    """Wrap voxelize's output as an spconv SparseConvTensor (batch size 1) on `device`."""
    features = torch.as_tensor(voxels).to(device=device, dtype=dtype)  # [M, 5]
    indices = torch.as_tensor(coords).to(device=device, dtype=torch.int32)  # [M, 4]
    return spconv.SparseConvTensor(features, indices, spatial_shape=cfg.sparse_shape, batch_size=1)
