"""Which order a network reads its voxel coordinates in (xyz or zyx), taken from the network itself.

    network_layout(model, stated=None)   'xyz' or 'zyx': the config's, else read from the spatial shape;
                                         a stated layout must agree with it
    layout_from_shape(shape)             'zyx' when z (the shortest axis) comes first, 'xyz' when last
    check_input_fits(model, coords, layout)   the coords lie inside the network's spatial shape

The ScatterDense `format` the engine reads is this layout. A wrong one is not an error anywhere: the
engine scatters the voxels into a BEV map with its axes swapped. So the exporter never guesses: it reads
the layout from the network's config (BEVFusion, CenterPoint, OpenPCDet's backbones), or from the
`sparse_shape` the network hands to spconv, whose z axis (a few tens of planes) is much shorter than
x and y (hundreds to thousands of voxels); or the user states it. A stated layout that the network
contradicts, and coords that do not fit the network's grid, are refused before any work.
"""
from typing import Optional, Sequence

import torch
from torch import nn

from helpers.check.runtime import check_coords_fit
from helpers.config import VoxelGrid
from helpers.errors import WorkbookError

LAYOUTS = ("xyz", "zyx")


def layout_from_shape(shape: Sequence[int]) -> Optional[str]:
    """'zyx' for [41, 1600, 1408], 'xyz' for [1440, 1440, 41]; None when no single axis is the shortest
    or the shortest one sits in the middle."""
    shape = [int(n) for n in shape]
    if len(shape) != 3 or shape.count(min(shape)) != 1:
        return None
    return {0: "zyx", 2: "xyz"}.get(shape.index(min(shape)))


def spatial_shape_of(model: nn.Module) -> Optional[list]:
    """The [a, b, c] spatial shape the network gives spconv (its `sparse_shape`), or None if it has none."""
    shape = getattr(model, "sparse_shape", None)
    if shape is None or len(shape) != 3:
        return None
    return [int(n) for n in shape]


def network_layout(model: nn.Module, stated: Optional[str] = None) -> str:
    """The coordinate order of `model`: its config's, else its spatial shape's, else `stated`; a stated
    layout that the network contradicts is an error, and so is a network that says nothing and no layout."""
    if stated is not None and stated not in LAYOUTS:
        raise WorkbookError(f"layout={stated!r}: expected 'xyz' or 'zyx'")
    cfg = getattr(model, "cfg", None)
    shape = spatial_shape_of(model)
    if isinstance(cfg, VoxelGrid):
        own, source = cfg.layout, f"its config {cfg.name} is {cfg.layout}"
    else:
        own = layout_from_shape(shape) if shape else None
        source = f"its spatial shape {shape} has z (the shortest axis) {'first' if own == 'zyx' else 'last'}"
    if own is None and stated is None:
        seen = f"its spatial shape {shape} does not show" if shape else "it has no sparse_shape to show"
        raise WorkbookError(f"{type(model).__name__}: cannot tell which order its coords are in ({seen} where z "
                            "is); state it: layout='zyx' (coords (batch, z, y, x)) or 'xyz' (command line --layout)")
    if own is not None and stated is not None and stated != own:
        raise WorkbookError(f"layout={stated!r} contradicts {type(model).__name__}: {source}, so it reads "
                            f"{own} coords; pass layout={own!r} or leave the layout out")
    return own or stated


def check_input_fits(model: nn.Module, coords: torch.Tensor, layout: str):
    """Raise a WorkbookError unless every coords row lies inside the network's spatial shape (when it has one)."""
    shape = spatial_shape_of(model)
    if shape is not None:
        check_coords_fit(coords, shape, layout)
