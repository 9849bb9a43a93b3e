"""Typed configuration of the BEVFusion lidar backbone and its voxel grid.

Two presets exist: the nuScenes grid at 0.075 m (sparse shape 1440 x 1440 x 41, BEV output
180 x 180) and the coarser 0.1 m grid (1024 x 1024 x 41, BEV output 128 x 128).
"""
from dataclasses import dataclass, replace
from typing import ClassVar, List, Tuple

from helpers.errors import WorkbookError


@dataclass(frozen=True)
class SCNConfig:
    network: ClassVar[str] = "bevfusion"
    checkpoint_prefix: ClassVar[str] = "encoders.lidar.backbone."  # mit-han-lab BEVFusion checkpoints
    checkpoint_layout: ClassVar[str] = "xyz"  # kernel axes of the stored weights
    name: str = "bevfusion-0075"
    point_range: Tuple[float, ...] = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)  # x0 y0 z0 x1 y1 z1 (m)
    voxel_size: Tuple[float, float, float] = (0.075, 0.075, 0.2)  # metres per voxel along x, y, z
    max_points_per_voxel: int = 10  # points averaged into one voxel, the rest are dropped
    max_voxels: int = 160000  # voxel cap of the voxelizer (BEVFusion's test-time value)
    in_channels: int = 5  # x, y, z, intensity, time-lag
    base_channels: int = 16  # conv_input output channels
    encoder_channels: Tuple[Tuple[int, ...], ...] = ((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128))
    encoder_paddings: Tuple[Tuple, ...] = ((0, 0, 1), (0, 0, 1), (0, 0, (1, 1, 0)), (0, 0))
    output_channels: int = 128  # conv_out channels; the BEV map has output_channels * z_out channels
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01
    layout: str = "xyz"  # coordinate order of the voxel indices: "xyz" (BEVFusion) or "zyx"

    def __post_init__(self):
        if self.layout not in ("xyz", "zyx"):
            raise WorkbookError(f"layout={self.layout!r} is not supported; expected 'xyz' or 'zyx'")
        if len(self.point_range) != 6 or len(self.voxel_size) != 3:
            raise WorkbookError("point_range needs 6 numbers and voxel_size 3; see helpers.config.SCNConfig")

    @property
    def grid_xyz(self) -> List[int]:
        """Voxel counts along x, y, z, e.g. [1440, 1440, 41]."""
        lo, hi = self.point_range[:3], self.point_range[3:]
        # +1 on z reproduces BEVFusion's sparse shape (41 for 8 m / 0.2 m), as mmdet3d does
        grid = [round((h - l) / s) for l, h, s in zip(lo, hi, self.voxel_size)]
        return [grid[0], grid[1], grid[2] + 1]

    @property
    def sparse_shape(self) -> List[int]:
        """The spatial shape given to spconv, in the layout's axis order."""
        g = self.grid_xyz
        return g if self.layout == "xyz" else g[::-1]

    def with_layout(self, layout: str) -> "SCNConfig":
        return replace(self, layout=layout)


PRESETS = {
    "bevfusion-0075": SCNConfig(),
    "bevfusion-01": SCNConfig(name="bevfusion-01", point_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0),
                              voxel_size=(0.1, 0.1, 0.2)),
}


def get_config(name: str = "bevfusion-0075", layout: str = "xyz") -> SCNConfig:
    """A preset by name: 'bevfusion-0075' (1440 grid) or 'bevfusion-01' (1024 grid)."""
    if name not in PRESETS:
        raise WorkbookError(f"unknown grid {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name].with_layout(layout)
