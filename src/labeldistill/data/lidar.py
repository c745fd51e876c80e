"""Multi-sweep LiDAR points for the teacher (METHOD.md 3.4, ``get_lidar_points``).

The key scan plus up to ``lidar_sweeps`` entries of the info's ``lidar_sweeps`` list, each
moved into the key LiDAR ego frame, with a time-lag column, cut to a planar range, BEV-augmented
on (x, y) and brought to a fixed number of points (random subset, or padding with -999 rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from labeldistill.data.augment import apply_bda_points
from labeldistill.data.readers import load_points
from labeldistill.geometry import invert, pose_matrix

#: Value of padding rows (far outside every point-cloud range, dropped by voxelisation).
PAD_VALUE = -999.0

LIDAR = "LIDAR_TOP"


def lidar_scans(info: dict[str, Any], num_sweeps: int) -> list[dict[str, Any]]:
    """The scan records used for one sample: ``[key] + lidar_sweeps[:num_sweeps]``.

    As the original: when the info has no sweeps at all, the key scan is repeated
    ``num_sweeps`` more times (``num_sweeps + 1`` identical copies).
    """
    key = info["lidar_infos"][LIDAR]
    sweeps = [s[LIDAR] for s in info.get("lidar_sweeps", []) if LIDAR in s]
    if not sweeps:
        return [key] * (num_sweeps + 1)
    return [key] + sweeps[:num_sweeps]


def scan_points(
    scan: dict[str, Any],
    key: dict[str, Any],
    dataroot: Path,
    range_cut: float,
    cache: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """One scan -> [P, 5] float32 (x, y, z, intensity, time lag s) in the key LiDAR ego frame.

    Steps (METHOD.md 3.4): load (DataError on a missing/corrupt file); column 4 <- (t_key -
    t_scan) / 1e6 s; keep sqrt(x^2 + y^2) < ``range_cut`` in the sensor frame; sensor -> ego
    with the *key* LiDAR calibration, -> global with the scan's ego pose, -> key ego.
    """
    filename = scan["filename"]
    if cache is not None and filename in cache:
        raw = cache[filename]
    else:
        raw = load_points(dataroot / filename)
        if cache is not None:
            cache[filename] = raw
    pts = np.array(raw[:, :5], dtype=np.float32, copy=True)
    pts[:, 4] = (int(key["timestamp"]) - int(scan["timestamp"])) / 1e6
    keep = np.hypot(pts[:, 0], pts[:, 1]) < range_cut
    pts = pts[keep]
    key_ego_from_lidar = (
        invert(pose_matrix(key["ego_pose"]))
        @ pose_matrix(scan["ego_pose"])
        @ pose_matrix(key["calibrated_sensor"])
    )
    xyz = pts[:, :3].astype(np.float64) @ key_ego_from_lidar[:3, :3].T + key_ego_from_lidar[:3, 3]
    pts[:, :3] = xyz.astype(np.float32)
    return pts


def lidar_points(
    info: dict[str, Any],
    dataroot: str | Path,
    *,
    num_sweeps: int,
    max_points: int,
    range_cut: float,
    bda: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Points of one sample -> [max_points, 5] float32 (x, y, z, intensity, time lag).

    bda ([4, 4]) is applied to (x, y) only. More than ``max_points`` points: a random subset
    without replacement (drawn from ``rng``); fewer: padded with rows of -999.
    """
    dataroot = Path(dataroot)
    key = info["lidar_infos"][LIDAR]
    cache: dict[str, np.ndarray] = {}
    parts = [
        scan_points(scan, key, dataroot, range_cut, cache) for scan in lidar_scans(info, num_sweeps)
    ]
    pts = apply_bda_points(np.concatenate(parts, axis=0), bda)
    n = pts.shape[0]
    if n > max_points:
        return pts[rng.choice(n, max_points, replace=False)]
    out = np.full((max_points, pts.shape[1]), PAD_VALUE, dtype=np.float32)
    out[:n] = pts
    return out
