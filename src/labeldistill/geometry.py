"""Homogeneous transforms, quaternions, projection and yaw helpers (numpy, float64).

Quaternions are (w, x, y, z) as in nuScenes. Matrices are 4x4 and named ``<to>_from_<from>``.
Every quaternion / rotation helper of the package lives here (product, normalisation,
quaternion <-> matrix, quaternion <-> yaw, ``rotz``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def quaternion_to_matrix(q: Sequence[float] | np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> 3x3 rotation matrix (normalises the input)."""
    w, x, y, z = (float(v) for v in q)
    n = math.sqrt(w * w + x * x + y * y + z * z)
    if n == 0.0:
        raise ValueError("zero quaternion")
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ],
        dtype=np.float64,
    )


def matrix_to_quaternion(r: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix -> unit quaternion (w, x, y, z) with w >= 0."""
    r = np.asarray(r, dtype=np.float64)
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    if trace > 0:
        s = math.sqrt(trace + 1.0) * 2
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2]) * 2
        q = [(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
    elif r[1, 1] > r[2, 2]:
        s = math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2]) * 2
        q = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s]
    else:
        s = math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1]) * 2
        q = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s]
    qa = np.array(q, dtype=np.float64)
    qa /= np.linalg.norm(qa)
    return -qa if qa[0] < 0 else qa


def quaternion_multiply(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Hamilton product ``a * b`` of quaternions (w, x, y, z) -> [4]."""
    aw, ax, ay, az = (float(v) for v in a)
    bw, bx, by, bz = (float(v) for v in b)
    return np.array(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dtype=np.float64,
    )


def normalize_quaternion(q: Sequence[float]) -> np.ndarray:
    """Quaternion (w, x, y, z) scaled to unit length -> [4] float64."""
    qa = np.asarray(q, dtype=np.float64)
    return qa / np.linalg.norm(qa)


def yaw_to_quaternion(yaw: float) -> np.ndarray:
    """Rotation about +z by ``yaw`` radians -> (w, x, y, z)."""
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)], dtype=np.float64)


def quaternion_yaw(q: Sequence[float]) -> float:
    """Yaw (about +z) of a rotation: angle of its rotated +x axis in the xy plane.

    Equals nuScenes ``Quaternion.yaw_pitch_roll[0]`` for rotations with small pitch and roll.
    """
    r = quaternion_to_matrix(q)
    return math.atan2(r[1, 0], r[0, 0])


def devkit_yaw(q: Sequence[float] | np.ndarray) -> float:
    """Yaw exactly as nuScenes / pyquaternion ``Quaternion.yaw_pitch_roll[0]`` computes it:
    ``atan2(2 (w z - x y), 1 - 2 (y^2 + z^2))`` of the normalised quaternion (differs from the
    heading of the rotated x axis by O(pitch * roll), ~1e-4 rad on nuScenes boxes)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return float(np.arctan2(2.0 * (w * z - x * y), 1.0 - 2.0 * (y * y + z * z)))


def transform(rotation: Sequence[float] | np.ndarray, translation: Sequence[float]) -> np.ndarray:
    """4x4 matrix from a quaternion (w, x, y, z) or a 3x3 rotation and a translation."""
    rot = np.asarray(rotation, dtype=np.float64)
    m = np.eye(4, dtype=np.float64)
    m[:3, :3] = rot if rot.shape == (3, 3) else quaternion_to_matrix(rot)
    m[:3, 3] = np.asarray(translation, dtype=np.float64)
    return m


def pose_matrix(record: dict) -> np.ndarray:
    """4x4 matrix of a nuScenes ``ego_pose`` or ``calibrated_sensor`` record.

    For an ego pose this is ``global_from_ego``; for a calibrated sensor ``ego_from_sensor``.
    """
    return transform(record["rotation"], record["translation"])


def invert(m: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    out = np.eye(4, dtype=np.float64)
    rt = m[:3, :3].T
    out[:3, :3] = rt
    out[:3, 3] = -rt @ m[:3, 3]
    return out


def apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to points [P, 3] -> [P, 3]."""
    return points @ m[:3, :3].T + m[:3, 3]


def rotz(angle: float) -> np.ndarray:
    """3x3 rotation about +z by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float64)


def project(intrinsic: np.ndarray, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection of camera-frame points [P, 3] -> (pixels [P, 2] (u, v), depth [P]).

    Pixels of points with depth <= 0 are meaningless; callers filter on depth.
    """
    k = np.asarray(intrinsic, dtype=np.float64)[:3, :3]
    depth = points_cam[:, 2]
    uvw = points_cam @ k.T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = uvw[:, :2] / depth[:, None]
    return uv, depth


def box_corners(box: Sequence[float]) -> np.ndarray:
    """8 corners [8, 3] of a box (x, y, z, l, w, h, yaw, ...) with geometric centre.

    Order: the four bottom corners counter-clockwise starting front-left, then the four top
    corners in the same order. "Front" is +l/2 along the heading.
    """
    x, y, z, length, width, height, yaw = (float(v) for v in box[:7])
    dx = np.array([1, -1, -1, 1, 1, -1, -1, 1], dtype=np.float64) * length / 2
    dy = np.array([1, 1, -1, -1, 1, 1, -1, -1], dtype=np.float64) * width / 2
    dz = np.array([-1, -1, -1, -1, 1, 1, 1, 1], dtype=np.float64) * height / 2
    c, s = math.cos(yaw), math.sin(yaw)
    return np.stack([x + c * dx - s * dy, y + s * dx + c * dy, z + dz], axis=1)


def wrap_angle(a: float | np.ndarray) -> float | np.ndarray:
    """Wrap to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi
