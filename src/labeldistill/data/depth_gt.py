"""LiDAR depth ground truth per key camera image (METHOD.md 3.2).

The key LiDAR scan goes LiDAR -> LiDAR ego (its calibration) -> global (LiDAR ego pose) ->
camera ego (inverse camera ego pose) -> camera (inverse camera calibration); depth is the
camera-frame z, pixels come from the 3x3 intrinsic. Points with depth > 0 and
``1 < u < width - 1``, ``1 < v < height - 1`` (a 1-pixel margin of the image's own size, read
from the info) are kept as float32 rows ``(u, v, depth)`` in original-image pixels and stored
flat in ``<dataroot>/depth_gt/<image file name>.bin``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labeldistill.data.readers import load_points
from labeldistill.errors import DataError
from labeldistill.geometry import invert, pose_matrix
from labeldistill.io import atomic_write_bytes
from labeldistill.nuscenes_schema import CAMERA_CHANNELS, LIDAR_CHANNEL

DEPTH_GT_DIR = "depth_gt"
ROW_BYTES = 3 * 4  # (u, v, depth) float32
MARGIN_PX = 1.0


def depth_gt_dir(dataroot: str | Path, depth_dir: str | Path | None = None) -> Path:
    """Where depth GT lives: ``depth_dir`` if given (``prepare --depth-out``,
    ``data.depth_gt_dir``), else ``dataroot/depth_gt``."""
    return Path(depth_dir) if depth_dir is not None else Path(dataroot) / DEPTH_GT_DIR


def depth_gt_path(dataroot: str | Path, filename: str, depth_dir: str | Path | None = None) -> Path:
    """``<depth_gt_dir(dataroot, depth_dir)>/<basename of filename>.bin``."""
    return depth_gt_dir(dataroot, depth_dir) / (Path(filename).name + ".bin")


def camera_from_lidar(info: dict, cam: str) -> np.ndarray:
    """4x4 ``camera_from_lidar`` of one camera of an info (via global, each sensor's own pose)."""
    lidar = info["lidar_infos"][LIDAR_CHANNEL]
    cam_info = info["cam_infos"][cam]
    global_from_lidar = pose_matrix(lidar["ego_pose"]) @ pose_matrix(lidar["calibrated_sensor"])
    cam_from_global = invert(pose_matrix(cam_info["calibrated_sensor"])) @ invert(
        pose_matrix(cam_info["ego_pose"])
    )
    return cam_from_global @ global_from_lidar


def project_to_cameras(points: np.ndarray, info: dict) -> dict[str, np.ndarray]:
    """LiDAR-frame points [P, >=3] -> {cam: [P_cam, 3] float32 (u, v, depth)} (METHOD.md 3.2).

    One product for all six cameras: per camera the rows ``(K @ camera_from_lidar[:3])[0:2]``
    and ``camera_from_lidar[2]`` (depth = camera z), then ``u, v = rows / depth``. Points keep
    the order of the scan.
    """
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    rows = []
    for cam in CAMERA_CHANNELS:
        cam_from_lidar = camera_from_lidar(info, cam)[:3]  # [3, 4]
        k = np.asarray(info["cam_infos"][cam]["calibrated_sensor"]["camera_intrinsic"])
        pix = np.asarray(k, dtype=np.float64)[:3, :3] @ cam_from_lidar
        rows += [pix[0], pix[1], cam_from_lidar[2]]
    m = np.stack(rows)  # [3 * 6, 4]
    proj = xyz @ m[:, :3].T + m[:, 3]  # [P, 18]
    out: dict[str, np.ndarray] = {}
    for c, cam in enumerate(CAMERA_CHANNELS):
        cam_info = info["cam_infos"][cam]
        depth = proj[:, 3 * c + 2]
        front = depth > 0
        d = depth[front]
        u = proj[front, 3 * c] / d
        v = proj[front, 3 * c + 1] / d
        width, height = float(cam_info["width"]), float(cam_info["height"])
        keep = (
            (u > MARGIN_PX) & (u < width - MARGIN_PX) & (v > MARGIN_PX) & (v < height - MARGIN_PX)
        )
        out[cam] = np.stack([u[keep], v[keep], d[keep]], axis=1).astype(np.float32)
    return out


def depth_points(info: dict, dataroot: str | Path) -> dict[str, np.ndarray]:
    """Depth GT of the six key images of an info -> {cam: [P, 3] float32 (u, v, depth)}.

    Reads the key LiDAR scan ``dataroot/<lidar filename>`` (DataError if missing/truncated).
    """
    lidar_file = Path(dataroot) / info["lidar_infos"][LIDAR_CHANNEL]["filename"]
    return project_to_cameras(load_points(lidar_file), info)


def write_depth_gt(path: str | Path, uvd: np.ndarray) -> None:
    """Write [P, 3] (u, v, depth) as flat float32, atomically."""
    arr = np.ascontiguousarray(uvd, dtype=np.float32).reshape(-1, 3)
    atomic_write_bytes(path, arr.tobytes())


def read_depth_gt(path: str | Path) -> np.ndarray:
    """Read a depth GT file -> [P, 3] float32 (u, v, depth); DataError if missing/truncated."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"depth GT {path} is missing: run `labeldistill prepare --dataroot DIR --version V`"
        )
    size = path.stat().st_size
    if size % ROW_BYTES != 0:
        raise DataError(
            f"depth GT {path} is truncated ({size} bytes is not a multiple of {ROW_BYTES}): "
            "delete it and rerun `labeldistill prepare`"
        )
    return np.fromfile(path, dtype=np.float32).reshape(-1, 3)


def depth_gt_is_current(path: Path, lidar_file: Path) -> bool:
    """A depth file counts as done when it exists, holds whole rows and is not older than the
    LiDAR scan it was computed from."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if st.st_size % ROW_BYTES != 0:
        return False
    try:
        return st.st_mtime_ns >= lidar_file.stat().st_mtime_ns
    except FileNotFoundError:
        return False
