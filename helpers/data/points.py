"""Reading lidar scans: .bin (raw float32 rows, nuScenes or KITTI) and .npy files.

Every point cloud in the workbook is a float32 array of shape [N, 5] with the columns
x, y, z (metres, ego frame), intensity (0-255) and time-lag (seconds since the key frame).
"""
from pathlib import Path

import numpy as np

from helpers.errors import WorkbookError

# ----------------------------------------------------------------------------- reading files
def read_npy(path: Path) -> np.ndarray:
    """A 2-D float .npy array, its header checked against the file size before anything is allocated."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        try:
            major, _ = fmt.read_magic(f)
            read_header = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
            shape, fortran_order, dtype = read_header(f)  # a lying header is caught below, before allocating
        except (ValueError, EOFError, SyntaxError, TypeError) as error:
            raise WorkbookError(f"{path}: not a .npy array ({' '.join(str(error).split())}); "
                                "re-save it with np.save(path, points)") from None
        if dtype.hasobject or dtype.kind != "f" or len(shape) != 2 or shape[1] not in (4, 5):
            raise WorkbookError(f"{path}: holds a {dtype} array of shape {shape}; expected a 2-D float array "
                                "with 4 or 5 columns (x, y, z, intensity[, time-lag]); re-save it as float32 [N, 5]")
        expected = shape[0] * shape[1] * dtype.itemsize
        actual = path.stat().st_size - f.tell()
        if actual != expected:
            raise WorkbookError(f"{path}: the header promises {shape} {dtype} ({expected} bytes) but the file holds "
                                f"{actual} bytes of data; the file is truncated or corrupt; re-save it with np.save")
        points = np.fromfile(f, dtype=dtype, count=shape[0] * shape[1])  # exactly the bytes checked above
    return points.reshape(shape, order="F" if fortran_order else "C")


def read_points(path, columns=None) -> np.ndarray:
    """Read a lidar scan from a .bin (raw float32 rows) or .npy file into a float32 [N, 5] array.

    columns=None means 5 columns (nuScenes: x, y, z, intensity, time-lag); columns=4 reads a
    KITTI scan (x, y, z, reflectance) and appends a zero time-lag column.
    """
    path = Path(path)
    if not path.is_file():
        raise WorkbookError(f"{path}: file not found; expected a .bin or .npy lidar scan; check the path")
    try:
        if path.suffix == ".bin":
            n_columns = 5 if columns is None else columns
            if n_columns not in (4, 5):
                raise WorkbookError(f"{path}: columns={columns!r} is not supported; expected 4 (KITTI) or 5 (nuScenes)")
            row_bytes = 4 * n_columns  # one float32 per column
            size = path.stat().st_size
            if size % row_bytes != 0:
                raise WorkbookError(f"{path}: {size} bytes is not a multiple of the {row_bytes}-byte row of "
                                    f"{n_columns} float32 columns; for a KITTI scan (x, y, z, reflectance) "
                                    "pass columns=4")
            points = np.fromfile(path, dtype=np.float32).reshape(-1, n_columns)  # [N, 4 or 5]
        elif path.suffix == ".npy":
            points = read_npy(path)
            if columns is not None and points.shape[1] != columns:
                raise WorkbookError(f"{path}: has {points.shape[1]} columns but columns={columns} was asked for; "
                                    f"leave columns=None for .npy files")
            points = points.astype(np.float32)  # [N, 4 or 5]
        else:
            raise WorkbookError(f"{path}: unsupported file type {path.suffix!r}; expected .bin (float32 rows) or .npy; "
                                f"convert the scan with np.save(path, points)")
    except OSError as error:  # unreadable, or it went away
        raise WorkbookError(f"{path}: cannot be read ({error.strerror}); expected a readable lidar scan; "
                            "fix its permissions or copy it somewhere readable") from None

    if len(points) == 0:
        raise WorkbookError(f"{path}: contains zero points; expected a non-empty lidar scan; check the file")
    bad_rows = int((~np.isfinite(points).all(axis=1)).sum())
    if bad_rows:
        raise WorkbookError(f"{path}: {bad_rows} of {len(points)} rows contain NaN or Inf; expected finite values; "
                            f"drop them with points[np.isfinite(points).all(axis=1)]")
    denormal = int(((points != 0) & (np.abs(points) < np.finfo(np.float32).tiny)).sum())
    if denormal:  # what int32 or float64 bytes look like when read as float32
        raise WorkbookError(f"{path}: {denormal} values are denormal floats (0 < |v| < 1.2e-38), which no lidar "
                            "scan holds; expected float32 values; was it written as int32 or float64? re-save it "
                            "with points.astype(np.float32)")
    if points.shape[1] == 4:  # KITTI: no time-lag, every point belongs to the key frame
        points = np.concatenate([points, np.zeros((len(points), 1), np.float32)], axis=1)  # [N, 5]
    return np.ascontiguousarray(points)
