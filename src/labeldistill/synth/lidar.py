"""The synthetic 32-beam spinning LiDAR: the same intersections as the cameras
(:mod:`labeldistill.synth.raycast`) for a fixed pattern of beams, with range noise, dropout
and an intensity model; and the exact point-in-box count of the annotations.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from labeldistill.geometry import rotz
from labeldistill.synth.raycast import cast_rays, face_normals, ground_material, object_arrays
from labeldistill.synth.world import World

LIDAR_TRANSLATION = (0.94, 0.0, 1.84)
LIDAR_YAW = -math.pi / 2  # the LIDAR_TOP x axis points to the right of the car, as in nuScenes
AMBIGUITY_MARGIN = 2e-3  # metres; points this close to an annotated box surface are dropped
LIDAR_BEAMS = 32
LIDAR_ELEVATION = (-30.0, 10.0)  # degrees
LIDAR_MAX_RANGE = 70.0
LIDAR_MIN_RANGE = 1.0


def ego_from_lidar() -> np.ndarray:
    """4x4 ego_from_lidar of the synthetic rig."""
    m = np.eye(4)
    m[:3, :3] = rotz(LIDAR_YAW)
    m[:3, 3] = LIDAR_TRANSLATION
    return m


@functools.lru_cache(maxsize=4)
def lidar_directions(azimuth_steps: int) -> np.ndarray:
    """Unit beam directions in the LiDAR frame, [B=32, A, 3] (beam-major)."""
    el = np.radians(np.linspace(*LIDAR_ELEVATION, LIDAR_BEAMS))
    az = np.arange(azimuth_steps) * (2 * math.pi / azimuth_steps)
    ce = np.cos(el)[:, None]
    return np.stack(
        [
            ce * np.cos(az)[None],
            ce * np.sin(az)[None],
            np.sin(el)[:, None] * np.ones_like(az)[None],
        ],
        -1,
    )


def scan_lidar(world: World, t: float, azimuth_steps: int, rng: np.random.Generator) -> np.ndarray:
    """Ray-cast one LiDAR sweep at time t -> points [P, 5] float32 (x, y, z, intensity, ring) in
    the LiDAR frame, ordered by azimuth column then beam."""
    global_from_lidar = world.ego_pose(t) @ ego_from_lidar()
    rot = global_from_lidar[:3, :3]
    origin = global_from_lidar[:3, 3]
    dirs_l = lidar_directions(azimuth_steps)  # [B, A, 3]
    n_b = dirs_l.shape[0]
    dirs = dirs_l.reshape(-1, 3) @ rot.T  # global, unit
    n = len(dirs)
    t_hit = np.full(n, np.inf)
    obj_id = np.full(n, -1, dtype=np.int64)
    normal = np.zeros((n, 3))
    refl = np.zeros(n)
    down = dirs[:, 2] < -1e-6
    tg = np.where(down, -origin[2] / np.where(down, dirs[:, 2], -1.0), np.inf)
    t_hit[:] = np.where(tg <= LIDAR_MAX_RANGE + 1.0, tg, np.inf)
    g = np.isfinite(t_hit)
    _, refl[g] = ground_material(world, origin[:2] + dirs[g, :2] * t_hit[g, None])
    normal[g] = (0.0, 0.0, 1.0)
    lidar_from_global = np.linalg.inv(global_from_lidar)
    step = 2 * math.pi / azimuth_steps
    beams = np.arange(n_b)
    beam_el = np.radians(np.linspace(*LIDAR_ELEVATION, LIDAR_BEAMS))
    el_step = float(beam_el[1] - beam_el[0])
    arrays = object_arrays(world)
    corners = (
        arrays.corners(t) @ lidar_from_global[:3, :3].T + lidar_from_global[:3, 3]
    )  # [O, 8, 3]
    cl = corners.mean(1)
    rng_xy = np.hypot(cl[:, 0], cl[:, 1])
    radius = np.hypot(arrays.half[:, 0], arrays.half[:, 1])
    cand_rays: list[np.ndarray] = []
    cand_objs: list[int] = []
    for i in np.nonzero(rng_xy - radius <= LIDAR_MAX_RANGE)[0]:
        rows = beams
        if rng_xy[i] <= radius[i] + 0.1:
            cols = np.arange(azimuth_steps)
        else:
            a_c = math.atan2(cl[i, 1], cl[i, 0])
            rel = (np.arctan2(corners[i, :, 1], corners[i, :, 0]) - a_c + math.pi) % (
                2 * math.pi
            ) - math.pi
            j0 = int(math.floor((a_c + rel.min()) / step)) - 1
            j1 = int(math.ceil((a_c + rel.max()) / step)) + 1
            cols = np.arange(j0, j1 + 1) % azimuth_steps
            if rng_xy[i] > radius[i] + 0.5:
                el = np.arctan2(corners[i, :, 2], np.hypot(corners[i, :, 0], corners[i, :, 1]))
                rows = beams[(beam_el >= el.min() - el_step) & (beam_el <= el.max() + el_step)]
                if len(rows) == 0:
                    continue
        cand_rays.append((rows[:, None] * azimuth_steps + cols[None]).ravel())
        cand_objs.append(int(i))
    hits = cast_rays(arrays, t, origin, dirs, cand_rays, cand_objs, t_hit, count_footprint=False)
    h_idx = np.nonzero(hits.obj >= 0)[0]
    t_hit[h_idx] = hits.t[h_idx]
    obj_id[h_idx] = hits.obj[h_idx]
    normal[h_idx] = face_normals(arrays, hits.obj[h_idx], hits.face[h_idx])
    refl[h_idx] = arrays.refl[hits.obj[h_idx]]
    valid = np.isfinite(t_hit) & (t_hit >= LIDAR_MIN_RANGE) & (t_hit <= LIDAR_MAX_RANGE)
    t_hit = np.where(valid, t_hit, 0.0)
    cos_inc = np.abs(np.sum(normal * dirs, axis=1))
    p_drop = 0.03 + 0.5 * (cos_inc < 0.08) + 0.25 * (t_hit / LIDAR_MAX_RANGE) ** 2 * (refl < 20)
    keep = valid & (rng.random(n) >= p_drop)
    rng_noisy = t_hit + rng.normal(0.0, 0.02, n)
    intensity = np.clip(refl * (0.35 + 0.65 * cos_inc) + rng.normal(0.0, 2.0, n), 0.0, 255.0)
    ring = np.repeat(beams, azimuth_steps).astype(np.float64)
    # column-major order (azimuth, then beam), like a spinning sensor
    order = np.arange(n).reshape(n_b, azimuth_steps).T.ravel()
    order = order[keep[order]]
    pts = dirs_l.reshape(-1, 3)[order] * rng_noisy[order, None]
    out = np.concatenate([pts, intensity[order, None], ring[order, None]], axis=1)
    return out.astype(np.float32)


def points_in_boxes_exact(
    points_global: np.ndarray, boxes: list[tuple[np.ndarray, np.ndarray, np.ndarray]], margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """Membership of points in boxes, with an ambiguity band.

    points_global [P, 3] float64; boxes: (centre [3], size (w, l, h) [3], rotation 3x3).
    Returns (inside [M, P] bool: strictly inside by more than ``margin``, ambiguous [P] bool:
    within ``margin`` of some box's surface while not clearly outside).
    """
    inside = np.zeros((len(boxes), len(points_global)), dtype=bool)
    ambiguous = np.zeros(len(points_global), dtype=bool)
    for m, (c, size, r) in enumerate(boxes):
        half = np.array([size[1], size[0], size[2]]) / 2.0
        rough = np.all(np.abs(points_global - c) <= np.linalg.norm(half) + 1.0, axis=1)
        idx = np.nonzero(rough)[0]
        if len(idx) == 0:
            continue
        local = np.abs((points_global[idx] - c) @ r)
        within = np.all(local <= half + margin, axis=1)
        strictly = np.all(local < half - margin, axis=1)
        inside[m, idx[strictly]] = True
        ambiguous[idx[within & ~strictly]] = True
    return inside, ambiguous
