"""A synthetic street scene, made by ray casting a 32-beam lidar: a deterministic scan for every seed.

    make_scene("small" | "default" | "full", seed)   float32 [N, 5]: x, y, z, intensity, time-lag
"""
import math

import numpy as np

from helpers.errors import WorkbookError

SCENES = {"small": 20000, "default": 60000, "full": 270000}  # point counts: CI, about 2 sweeps, 10 sweeps


# ----------------------------------------------------------------------------- synthetic scene
BEAM_ELEVATIONS_DEG = np.linspace(-30.0, 10.0, 32)  # a 32-beam spinning lidar, like nuScenes' HDL-32E
MAX_RANGE = 70.0  # metres; farther hits are not returned
EGO_SPEED = 5.0  # m/s along +x; older sweeps were taken from further back
SWEEP_PERIOD = 0.05  # seconds between sweeps (20 Hz)
POINTS_PER_SWEEP = 27000  # one sweep of the synthetic lidar returns about this many points
# surface types: mean and spread of intensity
GROUND, WALL, CAR, POLE, CROWN = range(5)
INTENSITY_MEAN = np.array([12.0, 45.0, 90.0, 130.0, 25.0])
INTENSITY_SPREAD = np.array([6.0, 15.0, 50.0, 25.0, 10.0])


def _make_world(rng) -> dict:
    """Random street layout: sloped ground, building walls on both sides, cars, poles, trees."""
    slope_x, slope_y = rng.normal(0.0, 0.004, size=2)  # mild slope of the ground plane

    def ground_z(x, y):  # the sensor is 1.8 m above the ground
        return -1.8 + slope_x * x + slope_y * y

    buildings, boxes, cylinders, spheres = [], [], [], []
    for side in (1.0, -1.0):
        wall_y = side * rng.uniform(9.0, 12.0)  # building fronts along the street
        x = -80.0
        while x < 80.0:  # a row of buildings with alleys between them
            length, height = rng.uniform(8.0, 25.0), rng.uniform(5.0, 14.0)
            buildings.append((wall_y, x, x + length, height))  # (y, x_start, x_end, height)
            x += length + rng.uniform(0.0, 4.0)
        for x in np.arange(-60.0, 60.0, 7.0) + rng.uniform(0.0, 3.0):  # parked cars and poles
            y = wall_y - side * 4.2
            if rng.uniform() < 0.5:
                boxes.append((x, y, x + 4.5, y + 1.8, ground_z(x, y), ground_z(x, y) + 1.5))
            if rng.uniform() < 0.25:  # a pole: cylinder (x, y, radius, z_bottom, z_top)
                cylinders.append((x, wall_y - side, 0.12, ground_z(x, wall_y), ground_z(x, wall_y) + rng.uniform(5, 8)))
            elif rng.uniform() < 0.3:  # a tree: trunk cylinder plus a round crown
                top, radius = ground_z(x, wall_y) + rng.uniform(2.5, 3.5), rng.uniform(1.5, 2.5)
                cylinders.append((x, wall_y - side * 1.5, 0.2, top - 3.5, top))
                spheres.append((x, wall_y - side * 1.5, top + 0.6 * radius, radius))
    for x in rng.uniform(10.0, 50.0, size=3) * rng.choice([-1.0, 1.0], size=3):  # cars in the lanes
        y = rng.choice([-0.9, 2.6])
        boxes.append((x, y, x + 4.5, y + 1.8, ground_z(x, y), ground_z(x, y) + 1.5))
    return {"slope": (slope_x, slope_y), "buildings": np.array(buildings), "boxes": np.array(boxes).reshape(-1, 6),
            "cylinders": np.array(cylinders).reshape(-1, 5), "spheres": np.array(spheres).reshape(-1, 4)}


def _cast_sweep(world, origin, n_azimuth, azimuth_offset, rng) -> np.ndarray:
    """Cast one 360-degree sweep of rays from `origin`; return the nearest hits as [K, 4] (x, y, z, intensity)."""
    azimuth = azimuth_offset + np.arange(n_azimuth) * (2 * np.pi / n_azimuth)  # [A]
    azimuth, elevation = np.meshgrid(azimuth, np.radians(BEAM_ELEVATIONS_DEG), indexing="ij")  # [A, 32] each
    dirs = np.stack([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                     np.sin(elevation)], axis=-1).reshape(-1, 3)  # [R, 3] unit vectors, R = A * 32
    ox, oy, oz = origin
    hits = np.full((len(dirs), 5), np.inf)  # [R, 5] distance to each surface type, inf = missed
    with np.errstate(divide="ignore", invalid="ignore"):
        slope_x, slope_y = world["slope"]  # ground plane z = -1.8 + slope_x * x + slope_y * y
        t = (-1.8 + slope_x * ox + slope_y * oy - oz) / (dirs[:, 2] - slope_x * dirs[:, 0] - slope_y * dirs[:, 1])
        hits[:, GROUND] = np.where(t > 0, t, np.inf)
        for wall_y, x0, x1, height in world["buildings"]:  # ray-plane with y = wall_y
            t = (wall_y - oy) / dirs[:, 1]
            x, z = ox + t * dirs[:, 0], oz + t * dirs[:, 2]
            inside = (t > 0) & (x >= x0) & (x < x1) & (z < height)
            hits[:, WALL] = np.minimum(hits[:, WALL], np.where(inside, t, np.inf))
        boxes = world["boxes"]  # [B, 6] = x0, y0, x1, y1, z0, z1; slab test
        inverse = 1.0 / dirs  # [R, 3]
        t_lo = (boxes[None, :, [0, 1, 4]] - origin) * inverse[:, None, :]  # [R, B, 3]
        t_hi = (boxes[None, :, [2, 3, 5]] - origin) * inverse[:, None, :]  # [R, B, 3]
        t_near = np.minimum(t_lo, t_hi).max(axis=2)  # [R, B]
        t_far = np.maximum(t_lo, t_hi).min(axis=2)  # [R, B]
        hits[:, CAR] = np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf).min(axis=1)
        cyl = world["cylinders"]  # [C, 5] = x, y, radius, z_bottom, z_top; vertical cylinders
        centre = cyl[:, :2] - origin[:2]  # [C, 2]
        a = (dirs[:, :2] ** 2).sum(axis=1)[:, None]  # [R, 1]
        b = dirs[:, :2] @ centre.T  # [R, C]
        t = (b - np.sqrt(b ** 2 - a * ((centre ** 2).sum(axis=1) - cyl[:, 2] ** 2))) / a  # [R, C], NaN = missed
        z = oz + t * dirs[:, 2:3]  # [R, C]
        hits[:, POLE] = np.where((t > 0) & (z >= cyl[:, 3]) & (z <= cyl[:, 4]), t, np.inf).min(axis=1)
        centre = world["spheres"][:, :3] - origin  # [S, 3]; tree crowns
        b = dirs @ centre.T  # [R, S]
        t = b - np.sqrt(b ** 2 - (centre ** 2).sum(axis=1) + world["spheres"][:, 3] ** 2)  # [R, S]
        hits[:, CROWN] = np.where(t > 0, t, np.inf).min(axis=1)
    surface = hits.argmin(axis=1)  # [R] nearest surface type
    distance = hits.min(axis=1)  # [R]
    keep = (distance > 1.0) & (distance <= MAX_RANGE)  # sky and far hits return nothing
    surface, distance, dirs = surface[keep], distance[keep], dirs[keep]
    distance = distance + rng.normal(0.0, 0.02, size=len(distance))  # 2 cm range noise
    xyz = origin + distance[:, None] * dirs  # [K, 3]
    intensity = INTENSITY_MEAN[surface] + INTENSITY_SPREAD[surface] * rng.normal(size=len(surface))
    intensity = np.round(np.clip(intensity, 0, 255))  # [K]
    return np.concatenate([xyz, intensity[:, None]], axis=1)  # [K, 4]


def synthetic_scene(n_points: int = 60000, seed: int = 0) -> np.ndarray:
    """A deterministic synthetic street scan as float32 [n_points, 5], made by ray casting.

    Large requests merge several sweeps (up to 10, 0.05 s apart, taken while the car drove
    along +x), like nuScenes' 10-sweep input; the time-lag column says which sweep a point is from.
    """
    if n_points < 1:
        raise WorkbookError(f"n_points={n_points} is too small; expected a positive point count such as 60000")
    rng = np.random.default_rng(seed)
    world = _make_world(rng)
    n_sweeps = min(10, math.ceil(n_points / POINTS_PER_SWEEP))
    probe = _cast_sweep(world, np.zeros(3), 360, 0.0, rng)  # a coarse sweep measures the hit rate
    hit_rate = len(probe) / (360 * len(BEAM_ELEVATIONS_DEG))
    n_azimuth = math.ceil(1.05 * n_points / (n_sweeps * len(BEAM_ELEVATIONS_DEG) * hit_rate))  # 5% spare
    sweeps = []
    for k in range(n_sweeps):
        time_lag = k * SWEEP_PERIOD
        origin = np.array([-EGO_SPEED * time_lag, 0.0, 0.0])  # the sensor was further back then
        hits = _cast_sweep(world, origin, n_azimuth, rng.uniform(0, 2 * np.pi / n_azimuth), rng)  # [K, 4]
        sweeps.append(np.concatenate([hits, np.full((len(hits), 1), time_lag)], axis=1))  # [K, 5]
    points = np.concatenate(sweeps)  # [about 1.05 * n_points, 5]
    if len(points) > n_points:  # random dropouts trim the spare points, keeping the scan order
        points = points[np.sort(rng.choice(len(points), n_points, replace=False))]
    return points.astype(np.float32)


def make_scene(name: str = "default", seed: int = 0) -> np.ndarray:
    """A named synthetic scene from SCENES: 'small' (20,000 points), 'default' (60,000) or 'full' (270,000)."""
    if name not in SCENES:
        raise WorkbookError(f"unknown scene {name!r}; expected one of {sorted(SCENES)}")
    return synthetic_scene(SCENES[name], seed)


