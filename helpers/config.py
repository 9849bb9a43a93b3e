"""Typed configuration of the lidar backbones and their voxel grid.

Four networks, one config class each: BEVFusion's SparseEncoder (SCNConfig), CenterPoint's
SpMiddleResNetFHD (CenterPointConfig), and OpenPCDet's VoxelBackBone8x / VoxelResBackBone8x on KITTI
(VoxelBackBone8xConfig / VoxelResBackBone8xConfig, sparse shape 41 x 1600 x 1408 in zyx).
Presets: BEVFusion on the nuScenes grid at 0.075 m (sparse shape 1440 x 1440 x 41, BEV output
180 x 180) and on the coarser 0.1 m grid (1024 x 1024 x 41, BEV output 128 x 128); CenterPoint on the
0.075 m grid in zyx (sparse shape 41 x 1440 x 1440); the OpenPCDet backbones on KITTI's grid.
"""
from dataclasses import dataclass, replace
from typing import ClassVar, List, Optional, Tuple

from helpers.errors import WorkbookError


class VoxelGrid:
    """What every network config shares: the grid of its point_range / voxel_size, in its layout."""

    def check_grid(self, layouts=("xyz", "zyx")):
        if self.layout not in layouts:
            raise WorkbookError(f"layout={self.layout!r} is not supported by {self.network}; expected one of "
                                f"{list(layouts)}")
        if len(self.point_range) != 6 or len(self.voxel_size) != 3:
            raise WorkbookError(f"point_range needs 6 numbers and voxel_size 3; see helpers.config.{type(self).__name__}")

    @property
    def grid_counts(self) -> List[int]:
        """Voxels inside point_range along x, y, z, e.g. [1440, 1440, 40]: where the voxelizer puts points."""
        lo, hi = self.point_range[:3], self.point_range[3:]
        return [round((h - l) / s) for l, h, s in zip(lo, hi, self.voxel_size)]

    @property
    def grid_xyz(self) -> List[int]:
        """The grid the network sees along x, y, z, e.g. [1440, 1440, 41]."""
        x, y, z = self.grid_counts
        return [x, y, z + 1]  # +1 on z: the sparse shape of BEVFusion and CenterPoint (41 for 8 m / 0.2 m)

    @property
    def sparse_shape(self) -> List[int]:
        """The spatial shape given to spconv, in the layout's axis order."""
        g = self.grid_xyz
        return g if self.layout == "xyz" else g[::-1]

    def with_layout(self, layout: str):
        return replace(self, layout=layout)


@dataclass(frozen=True)
class SCNConfig(VoxelGrid):
    """BEVFusion's lidar backbone, mmdet3d's SparseEncoder."""
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
        self.check_grid()


@dataclass(frozen=True)
class CenterPointConfig(VoxelGrid):
    """CenterPoint's lidar backbone, det3d's SpMiddleResNetFHD (nusc_centerpoint_voxelnet_0075voxel_fix_bn_z).

    CenterPoint works in zyx: coords (b, z, y, x), sparse shape [41, 1440, 1440]; its checkpoints store
    kernels in z, y, x order. Per-axis numbers below are x, y, z, like BEVFusion's.
    """
    network: ClassVar[str] = "centerpoint"
    checkpoint_prefix: ClassVar[str] = "backbone."  # det3d: {'state_dict': {'backbone.conv1.0.conv1.weight': ...}}
    checkpoint_layout: ClassVar[str] = "zyx"
    name: str = "centerpoint-0075"
    point_range: Tuple[float, ...] = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)  # x0 y0 z0 x1 y1 z1 (m)
    voxel_size: Tuple[float, float, float] = (0.075, 0.075, 0.2)  # grid [1440, 1440, 40] (+1 z plane)
    max_points_per_voxel: int = 10
    max_voxels: int = 160000  # det3d's test-time max_voxel_num
    in_channels: int = 5  # x, y, z, intensity, time-lag (mean of the voxel's points)
    stage_channels: Tuple[int, ...] = (16, 32, 64, 128)  # conv1 .. conv4
    blocks_per_stage: int = 2  # basic blocks per stage
    down_paddings: Tuple = (1, 1, (1, 1, 0))  # padding of the stride-2 convs opening conv2 .. conv4
    extra_kernel: Tuple[int, int, int] = (1, 1, 3)  # extra_conv: squeezes z 5 -> 2
    extra_stride: Tuple[int, int, int] = (1, 1, 2)
    output_channels: int = 128  # the BEV map has output_channels * 2 channels
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01
    layout: str = "zyx"

    def __post_init__(self):
        self.check_grid(layouts=("zyx",))  # xyz would need other kernel axes than the checkpoints hold


@dataclass(frozen=True)
class VoxelBackBone8xConfig(VoxelGrid):
    """OpenPCDet's VoxelBackBone8x (SECOND, PV-RCNN, Voxel R-CNN on KITTI), e.g. kitti_models/second.yaml.

    zyx like CenterPoint: coords (b, z, y, x), sparse shape = grid[::-1] + [1, 0, 0] = [41, 1600, 1408];
    OpenPCDet's checkpoints store kernels in z, y, x order. Per-axis numbers below are x, y, z.
    """
    network: ClassVar[str] = "voxelbackbone8x"
    checkpoint_prefix: ClassVar[str] = "backbone_3d."  # OpenPCDet: {'model_state': {'backbone_3d.conv1...': ...}}
    checkpoint_layout: ClassVar[str] = "zyx"
    name: str = "voxelbackbone8x-kitti"
    point_range: Tuple[float, ...] = (0.0, -40.0, -3.0, 70.4, 40.0, 1.0)  # x0 y0 z0 x1 y1 z1 (m), KITTI's front view
    voxel_size: Tuple[float, float, float] = (0.05, 0.05, 0.1)  # grid [1408, 1600, 40] (+1 z plane)
    max_points_per_voxel: int = 5  # OpenPCDet's KITTI MAX_POINTS_PER_VOXEL
    max_voxels: int = 40000  # its test-time MAX_NUMBER_OF_VOXELS
    in_channels: int = 4  # x, y, z, reflectance: MeanVFE averages a voxel's points
    stage_channels: Tuple[int, ...] = (16, 32, 64, 64)  # conv1 .. conv4
    output_channels: int = 128  # conv_out; the BEV map has output_channels * 2 channels
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01
    layout: str = "zyx"

    def __post_init__(self):
        self.check_grid(layouts=("zyx",))  # xyz would need other kernel axes than the checkpoints hold


@dataclass(frozen=True)
class VoxelResBackBone8xConfig(VoxelBackBone8xConfig):
    """OpenPCDet's VoxelResBackBone8x (CenterPoint and Voxel R-CNN's residual variant on KITTI): the same
    grid, residual basic blocks, 128 channels in conv4."""
    network: ClassVar[str] = "voxelresbackbone8x"
    name: str = "voxelresbackbone8x-kitti"
    stage_channels: Tuple[int, ...] = (16, 32, 64, 128)


PRESETS = {
    "bevfusion-0075": SCNConfig(),
    "bevfusion-01": SCNConfig(name="bevfusion-01", point_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0),
                              voxel_size=(0.1, 0.1, 0.2)),
    "centerpoint-0075": CenterPointConfig(),
    "voxelbackbone8x-kitti": VoxelBackBone8xConfig(),
    "voxelresbackbone8x-kitti": VoxelResBackBone8xConfig(),
}
NETWORKS = {"bevfusion": "bevfusion-0075", "centerpoint": "centerpoint-0075",  # network -> its default preset
            "voxelbackbone8x": "voxelbackbone8x-kitti", "voxelresbackbone8x": "voxelresbackbone8x-kitti"}


def get_config(name: str = "bevfusion-0075", layout: Optional[str] = None) -> VoxelGrid:
    """A preset by name: 'bevfusion-0075' (1440 grid), 'bevfusion-01' (1024 grid), 'centerpoint-0075',
    'voxelbackbone8x-kitti' or 'voxelresbackbone8x-kitti'; layout=None keeps the preset's own (xyz for
    BEVFusion, zyx for the others)."""
    if name not in PRESETS:
        raise WorkbookError(f"unknown grid {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name] if layout is None else PRESETS[name].with_layout(layout)
