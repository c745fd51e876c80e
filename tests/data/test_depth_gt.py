"""LiDAR depth GT (METHOD.md 3.2): every (u, v, d) reprojects to a LiDAR point through an
independent pyquaternion transform chain, the 1-pixel margin of the image's own size holds,
and the files written by ``prepare`` on the synthetic set are exactly ``depth_points``."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from pyquaternion import Quaternion

from labeldistill.data.depth_gt import (
    depth_gt_path,
    depth_points,
    project_to_cameras,
    read_depth_gt,
    write_depth_gt,
)
from labeldistill.data.infos import load_infos
from labeldistill.errors import DataError
from labeldistill.nuscenes_schema import CAMERA_CHANNELS, LIDAR_CHANNEL


def _lidar_from_camera_ref(info: dict, cam: str, pts_cam: np.ndarray) -> np.ndarray:
    """Camera-frame points -> LiDAR frame, step by step with pyquaternion (independent code)."""
    ci = info["cam_infos"][cam]
    li = info["lidar_infos"][LIDAR_CHANNEL]
    p = pts_cam.T.astype(np.float64)  # [3, P]
    p = Quaternion(ci["calibrated_sensor"]["rotation"]).rotation_matrix @ p
    p = p + np.array(ci["calibrated_sensor"]["translation"])[:, None]  # camera ego
    p = Quaternion(ci["ego_pose"]["rotation"]).rotation_matrix @ p
    p = p + np.array(ci["ego_pose"]["translation"])[:, None]  # global
    p = p - np.array(li["ego_pose"]["translation"])[:, None]
    p = Quaternion(li["ego_pose"]["rotation"]).inverse.rotation_matrix @ p  # lidar ego
    p = p - np.array(li["calibrated_sensor"]["translation"])[:, None]
    p = Quaternion(li["calibrated_sensor"]["rotation"]).inverse.rotation_matrix @ p
    return p.T


def _backproject(info: dict, cam: str, uvd: np.ndarray) -> np.ndarray:
    """(u, v, d) rows -> camera-frame points via the inverse intrinsic."""
    k = np.array(info["cam_infos"][cam]["calibrated_sensor"]["camera_intrinsic"], dtype=np.float64)
    uv1 = np.concatenate([uvd[:, :2], np.ones((len(uvd), 1))], axis=1).astype(np.float64)
    return (np.linalg.inv(k) @ uv1.T).T * uvd[:, 2:3].astype(np.float64)


def _camera_from_lidar_ref(info: dict, cam: str, pts_lidar: np.ndarray) -> np.ndarray:
    """LiDAR-frame points -> camera frame, step by step with pyquaternion (independent code)."""
    ci = info["cam_infos"][cam]
    li = info["lidar_infos"][LIDAR_CHANNEL]
    p = pts_lidar.T.astype(np.float64)
    p = Quaternion(li["calibrated_sensor"]["rotation"]).rotation_matrix @ p
    p = p + np.array(li["calibrated_sensor"]["translation"])[:, None]  # lidar ego
    p = Quaternion(li["ego_pose"]["rotation"]).rotation_matrix @ p
    p = p + np.array(li["ego_pose"]["translation"])[:, None]  # global
    p = p - np.array(ci["ego_pose"]["translation"])[:, None]
    p = Quaternion(ci["ego_pose"]["rotation"]).inverse.rotation_matrix @ p  # camera ego
    p = p - np.array(ci["calibrated_sensor"]["translation"])[:, None]
    p = Quaternion(ci["calibrated_sensor"]["rotation"]).inverse.rotation_matrix @ p
    return p.T


def check_reprojection(info: dict, lidar_points: np.ndarray, uvd_by_cam: dict) -> int:
    """Assert that the (u, v, d) rows of every camera are exactly the scan points (in scan
    order) that the independent pyquaternion chain puts in front of the camera inside the
    1-pixel margin, and that each row back-projects onto its scan point. Returns rows checked."""
    xyz = lidar_points[:, :3].astype(np.float64)
    rows = 0
    for cam in CAMERA_CHANNELS:
        uvd = uvd_by_cam[cam]
        ci = info["cam_infos"][cam]
        assert uvd.dtype == np.float32 and uvd.ndim == 2 and uvd.shape[1] == 3
        pc = _camera_from_lidar_ref(info, cam, xyz)
        k = np.array(ci["calibrated_sensor"]["camera_intrinsic"], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = (pc @ k.T)[:, :2] / pc[:, 2:3]
        w, h = ci["width"], ci["height"]
        keep = (pc[:, 2] > 0) & (uv[:, 0] > 1) & (uv[:, 0] < w - 1)
        keep &= (uv[:, 1] > 1) & (uv[:, 1] < h - 1)
        ref = np.concatenate([uv[keep], pc[keep, 2:3]], axis=1)
        assert uvd.shape == ref.shape, cam
        np.testing.assert_allclose(uvd, ref, rtol=1e-6, atol=1e-3)
        if len(uvd):
            assert (uvd[:, 2] > 0).all()
            assert (uvd[:, 0] > 1).all() and (uvd[:, 0] < w - 1).all()
            assert (uvd[:, 1] > 1).all() and (uvd[:, 1] < h - 1).all()
            back = _lidar_from_camera_ref(info, cam, _backproject(info, cam, uvd))
            np.testing.assert_allclose(back, xyz[keep], atol=2e-2)
        rows += len(uvd)
    return rows


@pytest.fixture(scope="module")
def fixture_info(fixture_root: Path) -> dict:
    return load_infos(fixture_root / "infos.pkl")[0]


def _points_at_pixels(info: dict, cam: str, uvd: np.ndarray) -> np.ndarray:
    return _lidar_from_camera_ref(info, cam, _backproject(info, cam, uvd))


def test_hand_placed_points_real_calibration(fixture_info: dict) -> None:
    """Points placed at known pixels of CAM_FRONT come back at those pixels and depths."""
    cam = "CAM_FRONT"
    wanted = np.array(
        [[800.0, 450.0, 10.0], [1.5, 2.0, 30.0], [1598.5, 898.5, 5.0], [100.25, 700.75, 57.0]]
    )
    rejected = np.array([[0.5, 450.0, 10.0], [800.0, 899.5, 10.0], [1599.2, 450.0, 8.0]])
    pts = _points_at_pixels(fixture_info, cam, np.concatenate([wanted, rejected]))
    behind = _points_at_pixels(fixture_info, cam, np.array([[800.0, 450.0, 10.0]]))
    # mirror the point through the camera centre: same pixel line, negative depth
    centre = _points_at_pixels(fixture_info, cam, np.zeros((1, 3)))
    behind = 2 * centre - behind
    out = project_to_cameras(np.concatenate([pts, behind]), fixture_info)[cam]
    assert out.shape == (4, 3)
    order = np.argsort(out[:, 2])
    np.testing.assert_allclose(out[order], wanted[np.argsort(wanted[:, 2])], atol=2e-3)


def test_margin_follows_image_size(fixture_info: dict) -> None:
    """The margin is 1 px of the info's own width/height, not a fixed 1600x900."""
    info = copy.deepcopy(fixture_info)
    cam = "CAM_FRONT"
    info["cam_infos"][cam]["width"] = 800
    info["cam_infos"][cam]["height"] = 450
    uvd = np.array([[798.5, 100.0, 12.0], [799.5, 100.0, 12.0], [300.0, 448.5, 9.0]])
    uvd = np.concatenate([uvd, [[300.0, 449.2, 9.0], [1200.0, 300.0, 9.0]]])
    out = project_to_cameras(_points_at_pixels(info, cam, uvd), info)[cam]
    np.testing.assert_allclose(out[np.argsort(out[:, 2])], uvd[[2, 0]], atol=2e-3)


def test_random_points_reproject(fixture_info: dict) -> None:
    rng = np.random.default_rng(0)
    pts = np.concatenate(
        [rng.uniform(-60, 60, (4000, 2)), rng.uniform(-3, 3, (4000, 1)), rng.random((4000, 2))],
        axis=1,
    ).astype(np.float32)
    out = project_to_cameras(pts, fixture_info)
    assert check_reprojection(fixture_info, pts, out) > 1000
    # overlapping fields of view: a point may be seen by two cameras, never by none in front
    assert sum(len(v) for v in out.values()) <= 2 * len(pts)


def test_depth_file_round_trip(tmp_path: Path) -> None:
    path = depth_gt_path(tmp_path, "samples/CAM_FRONT/n015__CAM_FRONT__1531883530412470.jpg")
    assert path == tmp_path / "depth_gt" / "n015__CAM_FRONT__1531883530412470.jpg.bin"
    uvd = np.array([[1.5, 2.5, 3.5], [4.0, 5.0, 6.0]], dtype=np.float32)
    write_depth_gt(path, uvd)
    assert path.stat().st_size == 24
    np.testing.assert_array_equal(read_depth_gt(path), uvd)
    path.write_bytes(b"\0" * 13)
    with pytest.raises(DataError, match="truncated"):
        read_depth_gt(path)


def test_missing_lidar_file_names_it(fixture_root: Path, fixture_info: dict) -> None:
    with pytest.raises(DataError) as exc:
        depth_points(fixture_info, fixture_root)
    assert fixture_info["lidar_infos"][LIDAR_CHANNEL]["filename"] in str(exc.value)


def test_synthetic_depth_reprojects_onto_key_scan(synthetic_root: Path) -> None:
    """On the synthetic set (real files): every stored (u, v, d) is a point of the key scan."""
    from labeldistill.data.infos import info_path
    from labeldistill.data.readers import load_points

    infos = load_infos(info_path(synthetic_root, "mini_val"))
    rows = 0
    for info in (infos[0], infos[-1]):
        stored = {
            cam: read_depth_gt(depth_gt_path(synthetic_root, info["cam_infos"][cam]["filename"]))
            for cam in CAMERA_CHANNELS
        }
        scan = load_points(synthetic_root / info["lidar_infos"][LIDAR_CHANNEL]["filename"])
        rows += check_reprojection(info, scan, stored)
    assert rows > 100
