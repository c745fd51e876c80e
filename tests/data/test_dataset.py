"""NuScenesDataset / collate on the real one-sample fixture and on hand-written files."""

from __future__ import annotations

import copy
import math
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from labeldistill.config import BevAugConfig, DataConfig, ImageAugConfig
from labeldistill.data import augment
from labeldistill.data.dataset import (
    NuScenesDataset,
    build_dataset,
    collate,
    convert_gt,
    depth_map,
    mean_camera_ego_pose,
    select_frames,
)
from labeldistill.data.lidar import PAD_VALUE, lidar_points
from labeldistill.errors import DataError
from labeldistill.geometry import invert, pose_matrix
from labeldistill.structures import CAMERAS, CLASSES

NO_BDA = BevAugConfig(
    rot_lim=(0.0, 0.0), scale_lim=(1.0, 1.0), flip_dx_ratio=0.0, flip_dy_ratio=0.0
)
SMALL = (128, 352)


def _infos(root: Path) -> list[dict]:
    with open(root / "infos.pkl", "rb") as f:
        return pickle.load(f)


def _cfg(**kw) -> DataConfig:
    base = {"key_idxes": (), "return_depth": False, "image_size": SMALL}
    base.update(kw)
    return DataConfig(**base)


def _shifted(info: dict, scene: str, k: int) -> dict:
    """A copy of ``info`` as if k key frames later in ``scene``: ego 2 m further along global x,
    timestamps + k * 0.5 s."""
    new = copy.deepcopy(info)
    new["scene_token"] = scene
    new["sample_token"] = f"{scene}-{k}"
    for cam in new["cam_infos"].values():
        cam["timestamp"] += k * 500000
        cam["ego_pose"]["translation"][0] += 2.0 * k
    return new


def _workdir(tmp_path: Path, fixture: Path) -> Path:
    """A dataroot with the fixture's images (symlinked) in which tests write their own files."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "samples").symlink_to(fixture / "samples")
    return root


# --------------------------------------------------------------------------------------------
# GT conversion and camera matrices on the real fixture
# --------------------------------------------------------------------------------------------


def _devkit_boxes(info: dict) -> list[list[float]]:
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    poses = [info["cam_infos"][c]["ego_pose"] for c in CAMERAS]
    t = np.mean([p["translation"] for p in poses], axis=0)
    q = np.mean([p["rotation"] for p in poses], axis=0)
    out = []
    for ann in info["ann_infos"]:
        box = Box(
            ann["translation"],
            ann["size"],
            Quaternion(ann["rotation"]),
            velocity=tuple(ann["velocity"]),
        )
        box.translate(-t)
        box.rotate(Quaternion(q).inverse)
        out.append(
            [*box.center, *box.wlh[[1, 0, 2]], box.orientation.yaw_pitch_roll[0], *box.velocity[:2]]
        )
    return out


def test_fixture_gt_matches_devkit(fixture_root: Path) -> None:
    infos = _infos(fixture_root)
    ds = NuScenesDataset(_cfg(), infos, fixture_root, train=False)
    s = ds[0]
    assert s.imgs.shape == (1, 6, 3, *SMALL)
    assert s.gt_boxes.shape == (10, 9)
    expected = np.array(_devkit_boxes(infos[0]))
    np.testing.assert_allclose(s.gt_boxes.double().numpy(), expected, atol=1e-4)
    names = [CLASSES[i] for i in s.gt_labels.tolist()]
    raw = [a["category_name"] for a in infos[0]["ann_infos"]]
    mapping = {
        "vehicle.truck": "truck",
        "vehicle.car": "car",
        "human.pedestrian.construction_worker": "pedestrian",
        "movable_object.trafficcone": "traffic_cone",
    }
    assert names == [mapping[r] for r in raw]
    assert sorted(names).count("truck") == 3 and names.count("pedestrian") == 2
    # METHOD 16: a truck at about (20.4, 10.4) of 7.5 x 2.3 x 3.1 m, cars moving ~5.7/4.9 m/s.
    truck = s.gt_boxes[(s.gt_boxes[:, 0] - 20.4).abs() < 0.2][0]
    np.testing.assert_allclose(truck[[1, 3, 4, 5]].numpy(), [10.4, 7.5, 2.3, 3.1], atol=0.06)
    cars = s.gt_boxes[s.gt_labels == CLASSES.index("car")]
    np.testing.assert_allclose(sorted(cars[:, 7:9].norm(dim=1).tolist()), [4.9, 5.7], atol=0.1)
    # Meta: mean camera ego pose.
    pose = mean_camera_ego_pose(infos[0])
    assert s.meta.token == infos[0]["sample_token"]
    np.testing.assert_allclose(s.meta.ego_translation, pose.translation)
    np.testing.assert_allclose(s.meta.ego_rotation, pose.rotation)


def test_gt_filters_unmapped_and_empty_annotations(fixture_root: Path) -> None:
    info = copy.deepcopy(_infos(fixture_root)[0])
    info["ann_infos"][0]["category_name"] = "movable_object.debris"
    info["ann_infos"][1]["num_lidar_pts"] = 0
    info["ann_infos"][1]["num_radar_pts"] = 0
    info["ann_infos"][2]["num_lidar_pts"] = 0
    info["ann_infos"][2]["num_radar_pts"] = 3  # radar points only: kept
    info["ann_infos"][3]["category_name"] = "vehicle.bus.bendy"
    info["ann_infos"][4]["velocity"] = np.array([np.nan, np.nan, np.nan])
    gt = convert_gt(info, mean_camera_ego_pose(info))
    assert gt.boxes.shape == (8, 9)
    assert gt.labels[1] == CLASSES.index("bus")  # annotation 3 is the second kept one
    np.testing.assert_array_equal(gt.boxes[2, 7:9], [0.0, 0.0])


def test_fixture_legacy_means(fixture_root: Path) -> None:
    """The deterministic means of the original dataset test (METHOD 16): resize 0.4, no
    rotation, 256 x 704, bda off, two frames (the key frame reused)."""
    cfg = DataConfig(
        key_idxes=(-2,),
        ida_aug=ImageAugConfig(resize_lim=(0.4, 0.4), rot_lim=(0.0, 0.0), rand_flip=False),
        bda_aug=NO_BDA,
        return_depth=False,
    )
    s = NuScenesDataset(cfg, _infos(fixture_root), fixture_root, train=True)[0]
    assert s.imgs.shape == (2, 6, 3, 256, 704)
    assert s.intrinsics.mean().item() == pytest.approx(230.0464, rel=1e-4)
    assert s.ego_from_camera.mean().item() == pytest.approx(0.1678, abs=1e-4)
    assert s.key_from_frame.mean().item() == pytest.approx(0.25, abs=1e-6)
    assert s.bda.mean().item() == pytest.approx(0.25, abs=1e-6)
    # Without flips: A = 0.4 I, t = (0, -104) -> (0.4 + 0.4 + 1 + 1 - 104) / 16.
    assert s.ida.mean().item() == pytest.approx(-6.325, abs=1e-5)
    # 64 zero-filled columns on the right (640 < 704), normalised value -mean/std per channel.
    right = s.imgs[..., 640:]
    # Zero pixels: -mean / std with the RGB statistics whatever the channel order.
    expected = -torch.tensor([123.675 / 58.395, 116.28 / 57.12, 103.53 / 57.375])
    torch.testing.assert_close(right, expected.view(1, 1, 3, 1, 1).expand_as(right))


def test_fixture_test_time_matrices(fixture_root: Path) -> None:
    infos = _infos(fixture_root)
    s = NuScenesDataset(DataConfig(key_idxes=(-2, -4)), infos, fixture_root, train=False)[0]
    assert s.imgs.shape == (3, 6, 3, 256, 704)
    ida = torch.tensor([[0.44, 0, 0, 0], [0, 0.44, 0, -140], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    torch.testing.assert_close(s.ida, ida.expand(3, 6, 4, 4))
    torch.testing.assert_close(s.bda, torch.eye(4))
    for ci, cam in enumerate(CAMERAS):
        rec = infos[0]["cam_infos"][cam]
        # Key frame: camera extrinsic; intrinsics K.
        torch.testing.assert_close(
            s.ego_from_camera[0, ci],
            torch.from_numpy(pose_matrix(rec["calibrated_sensor"])).float(),
        )
        torch.testing.assert_close(
            s.intrinsics[0, ci, :3, :3],
            torch.tensor(rec["calibrated_sensor"]["camera_intrinsic"], dtype=torch.float32),
        )
        assert s.timestamps[0, ci].item() == rec["timestamp"]
    assert s.timestamps.dtype == torch.int64


def test_bgr_quirk_swaps_channels(fixture_root: Path) -> None:
    infos = _infos(fixture_root)
    bgr = NuScenesDataset(_cfg(), infos, fixture_root, train=False)[0].imgs[0, 1]
    rgb = NuScenesDataset(_cfg(bgr_quirk=False), infos, fixture_root, train=False)[0].imgs[0, 1]
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    raw_bgr = torch.stack([bgr[c] * std[c] + mean[c] for c in range(3)])
    raw_rgb = torch.stack([rgb[c] * std[c] + mean[c] for c in range(3)])
    torch.testing.assert_close(raw_bgr, raw_rgb.flip(0), atol=1e-3, rtol=0)
    assert (raw_rgb - raw_rgb.round()).abs().max() < 1e-3  # integer pixel values
    # Against PIL directly: CAM_FRONT, test-time ida.
    from labeldistill.data.readers import load_image

    rec = infos[0]["cam_infos"]["CAM_FRONT"]
    params = augment.sample_ida(np.random.default_rng(0), _cfg(), 1600, 900, train=False)
    pil = augment.apply_ida_image(load_image(fixture_root / rec["filename"]), params)
    ref = torch.from_numpy(np.asarray(pil, dtype=np.float32)).permute(2, 0, 1)
    torch.testing.assert_close(raw_rgb, ref, atol=1e-3, rtol=0)


def test_train_boxes_follow_bda(fixture_root: Path) -> None:
    infos = _infos(fixture_root)
    plain = NuScenesDataset(_cfg(), infos, fixture_root, train=False)[0]
    cfg = _cfg(bda_aug=BevAugConfig(flip_dx_ratio=1.0, flip_dy_ratio=0.0))
    aug = NuScenesDataset(cfg, infos, fixture_root, train=True, seed=5)[0]
    m = aug.bda[:3, :3]
    assert not torch.allclose(aug.bda, torch.eye(4))
    assert m[0, 0].item() < 0  # flip_dx with small rotation
    torch.testing.assert_close(aug.gt_boxes[:, :3], plain.gt_boxes[:, :3] @ m.T, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        aug.gt_boxes[:, 7:9], plain.gt_boxes[:, 7:9] @ m[:2, :2].T, atol=1e-4, rtol=0
    )
    scale = torch.linalg.det(m).abs() ** (1 / 3)
    torch.testing.assert_close(
        aug.gt_boxes[:, 3:6], plain.gt_boxes[:, 3:6] * scale, atol=1e-4, rtol=0
    )
    alpha = math.atan2(m[1, 0].item(), -m[0, 0].item())  # flip_dx: M = F s Rz(alpha)
    torch.testing.assert_close(
        aug.gt_boxes[:, 6], math.pi - (plain.gt_boxes[:, 6] + alpha), atol=1e-4, rtol=0
    )


# --------------------------------------------------------------------------------------------
# Frames, history fallback, previous-frame matrices
# --------------------------------------------------------------------------------------------


def test_select_frames_hand_worked() -> None:
    infos = [{"scene_token": s} for s in "AAABB"]
    assert select_frames(infos, 2, (-1, -3), "current") == [2, 1, 2]
    assert select_frames(infos, 2, (-1, -3), "last_valid") == [2, 1, 1]
    assert select_frames(infos, 4, (-1, -2), "current") == [4, 3, 4]
    assert select_frames(infos, 4, (-1, -2), "last_valid") == [4, 3, 3]
    assert select_frames(infos, 0, (-2, -4), "last_valid") == [0, 0, 0]
    assert select_frames(infos, 3, (-1,), "last_valid") == [3, 3]
    assert select_frames(infos, 2, (-2,), "current") == [2, 0]
    with pytest.raises(ValueError):
        select_frames(infos, 0, (-1,), "nearest")


def test_history_fallback_train_vs_eval(fixture_root: Path) -> None:
    """Scene A has 3 samples, scene B 2; frames are identified by their camera timestamps."""
    info = _infos(fixture_root)[0]
    infos = [_shifted(info, "A", k) for k in range(3)] + [_shifted(info, "B", k) for k in range(2)]
    t0 = info["cam_infos"]["CAM_FRONT"]["timestamp"]
    cfg = _cfg(key_idxes=(-1, -3), image_size=(32, 88), augment=False)

    def frames(ds: NuScenesDataset, idx: int) -> list[int]:
        ts = ds[idx].timestamps[:, CAMERAS.index("CAM_FRONT")]
        return [(int(t) - t0) // 500000 for t in ts]

    train = NuScenesDataset(cfg, infos, fixture_root, train=True)  # last_valid (default)
    evald = NuScenesDataset(cfg, infos, fixture_root, train=False)  # current (default)
    assert frames(train, 2) == [2, 1, 1]
    assert frames(evald, 2) == [2, 1, 2]
    assert frames(train, 4) == [1, 0, 0]  # scene B: k = 1, 0
    assert frames(evald, 4) == [1, 0, 1]

    # Previous frame: ego moved 2 m along global x -> camera->key-ego translation moves by
    # R_key^T (-2, 0, 0) ... i.e. key_ego_from_global @ global shift.
    s = evald[1]
    for ci, cam in enumerate(CAMERAS):
        key, prev = infos[1]["cam_infos"][cam], infos[0]["cam_infos"][cam]
        shift = invert(pose_matrix(key["ego_pose"]))[:3, :3] @ np.array([-2.0, 0.0, 0.0])
        expected = pose_matrix(prev["calibrated_sensor"]).copy()
        expected[:3, 3] += shift
        np.testing.assert_allclose(s.ego_from_camera[1, ci].double().numpy(), expected, atol=1e-4)
        # sensor2sensor is the inverse of key camera <- frame camera.
        key_cam_from_frame_cam = invert(pose_matrix(key["calibrated_sensor"])) @ expected
        np.testing.assert_allclose(
            s.key_from_frame[1, ci].double().numpy() @ key_cam_from_frame_cam,
            np.eye(4),
            atol=1e-4,
        )
        np.testing.assert_allclose(s.key_from_frame[0, ci].numpy(), np.eye(4), atol=1e-5)


def test_randomness_per_item_and_epoch(fixture_root: Path) -> None:
    info = _infos(fixture_root)[0]
    infos = [_shifted(info, "A", k) for k in range(2)]
    cfg = _cfg(image_size=(32, 88))
    ds = NuScenesDataset(cfg, infos, fixture_root, train=True, seed=1)
    a, b = ds[0], ds[0]
    torch.testing.assert_close(a.ida, b.ida)
    torch.testing.assert_close(a.imgs, b.imgs)
    assert not torch.equal(ds[1].ida, a.ida)
    ds.set_epoch(1)
    assert not torch.equal(ds[0].ida, a.ida)
    other_seed = NuScenesDataset(cfg, infos, fixture_root, train=True, seed=2)
    assert not torch.equal(other_seed[0].ida, a.ida)
    # Independent of DataLoader workers.
    ds.set_epoch(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    batch = next(iter(loader))
    torch.testing.assert_close(batch.ida[0], a.ida)
    torch.testing.assert_close(batch.bda[1], ds[1].bda)


# --------------------------------------------------------------------------------------------
# Depth maps
# --------------------------------------------------------------------------------------------


def test_depth_map_hand_worked() -> None:
    p = augment.IdaParams(0.44, (704, 396), (0, 140, 704, 396), False, 0.0)
    uvd = np.array(
        [
            [100.0, 400.0, 5.0],  # -> (44, 36)
            [100.5, 401.0, 7.0],  # -> (44.22, 36.44) -> same pixel: overwrites
            [10.0, 100.0, 9.0],  # -> v = -96: dropped
            [1599.0, 899.0, 3.0],  # -> (703.56, 255.56) -> (703, 255)
        ],
        dtype=np.float32,
    )
    d = depth_map(uvd, p)
    assert d.shape == (256, 704)
    assert d[36, 44] == 7.0 and d[255, 703] == 3.0
    assert np.count_nonzero(d) == 2


def test_dataset_depth_from_handwritten_files(fixture_root: Path, tmp_path: Path) -> None:
    from labeldistill.data.depth_gt import depth_gt_path

    root = _workdir(tmp_path, fixture_root)
    infos = _infos(fixture_root)
    rng = np.random.default_rng(0)
    written = {}
    for cam in CAMERAS:
        uvd = np.column_stack(
            [rng.uniform(300, 1300, 20), rng.uniform(500, 850, 20), rng.uniform(2, 50, 20)]
        ).astype(np.float32)
        uvd[1, :2] = uvd[0, :2]  # same pixel twice: the later one (row 1) wins
        path = depth_gt_path(root, infos[0]["cam_infos"][cam]["filename"])
        path.parent.mkdir(exist_ok=True)
        uvd.tofile(path)
        written[cam] = uvd
    cfg = _cfg(
        return_depth=True, image_size=(256, 704), ida_aug=ImageAugConfig(rot_lim=(-5.4, 5.4))
    )
    s = NuScenesDataset(cfg, infos, root, train=True, seed=3)[0]
    assert s.depth is not None and s.depth.shape == (6, 256, 704)
    for ci, cam in enumerate(CAMERAS):
        uvd = written[cam]
        ida = s.ida[0, ci].double().numpy()
        uv = (uvd[:, :2] @ ida[:2, :2].T + ida[:2, 3]).astype(np.int64)  # truncation (>= 0 here)
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < 704) & (uv[:, 1] >= 0) & (uv[:, 1] < 256)
        assert inside[0] and inside.sum() >= 10
        for i in np.nonzero(inside)[0][1:]:  # skip row 0, overwritten by row 1
            pix = (uv[:, 0] == uv[i, 0]) & (uv[:, 1] == uv[i, 1])
            last = np.nonzero(pix)[0].max()
            assert s.depth[ci, uv[i, 1], uv[i, 0]].item() == pytest.approx(uvd[last, 2])
        assert s.depth[ci, uv[0, 1], uv[0, 0]].item() == pytest.approx(uvd[1, 2])
        n_pixels = len({(int(u), int(v)) for u, v in uv[inside]})
        assert int((s.depth[ci] > 0).sum()) == n_pixels
    # Evaluation: no depth maps.
    assert NuScenesDataset(cfg, infos, root, train=False)[0].depth is None


def test_missing_depth_file_raises(fixture_root: Path, tmp_path: Path) -> None:
    root = _workdir(tmp_path, fixture_root)
    ds = NuScenesDataset(_cfg(return_depth=True), _infos(fixture_root), root, train=True)
    with pytest.raises(DataError, match="depth_gt"):
        ds[0]


# --------------------------------------------------------------------------------------------
# LiDAR points
# --------------------------------------------------------------------------------------------


def _lidar_info(root: Path, key_pts: np.ndarray, sweeps: list[np.ndarray]) -> dict:
    """An info with a key scan and sweeps, each sweep 50 ms earlier with its own ego pose."""

    def rec(name: str, ts: int, t: list[float], yaw: float, pts: np.ndarray) -> dict:
        path = root / "samples" / "LIDAR_TOP" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pts.astype(np.float32).tofile(path)
        return {
            "filename": f"samples/LIDAR_TOP/{name}",
            "timestamp": ts,
            "ego_pose": {
                "translation": t,
                "rotation": [math.cos(yaw / 2), 0, 0, math.sin(yaw / 2)],
            },
            "calibrated_sensor": {
                "translation": [0.9, 0.0, 1.8],
                "rotation": [math.cos(-0.785), 0.0, 0.0, math.sin(-0.785)],  # ~ -90 deg yaw
            },
        }

    t_key = 1_000_000_000
    info = {
        "lidar_infos": {"LIDAR_TOP": rec("key.pcd.bin", t_key, [100.0, 50.0, 0.0], 0.3, key_pts)},
        "lidar_sweeps": [
            {
                "LIDAR_TOP": rec(
                    f"s{i}.pcd.bin",
                    t_key - 50_000 * (i + 1),
                    [100.0 - 0.7 * (i + 1), 50.0 - 0.2 * (i + 1), 0.0],
                    0.3 - 0.01 * i,
                    p,
                )
            }
            for i, p in enumerate(sweeps)
        ],
    }
    return info


def _devkit_points(root: Path, info: dict, scan: dict) -> np.ndarray:
    """Reference: the devkit's LidarPointCloud chain sensor -> ego -> global -> key ego."""
    from nuscenes.utils.data_classes import LidarPointCloud
    from pyquaternion import Quaternion

    pc = LidarPointCloud.from_file(str(root / scan["filename"]))
    key = info["lidar_infos"]["LIDAR_TOP"]
    pc.points = pc.points[:, np.hypot(pc.points[0], pc.points[1]) < 58.0]
    cs, ep, kep = key["calibrated_sensor"], scan["ego_pose"], key["ego_pose"]
    pc.rotate(Quaternion(cs["rotation"]).rotation_matrix)
    pc.translate(np.array(cs["translation"]))
    pc.rotate(Quaternion(ep["rotation"]).rotation_matrix)
    pc.translate(np.array(ep["translation"]))
    pc.translate(-np.array(kep["translation"]))
    pc.rotate(Quaternion(kep["rotation"]).rotation_matrix.T)
    lag = (key["timestamp"] - scan["timestamp"]) / 1e6
    return np.column_stack([pc.points[:3].T, pc.points[3], np.full(pc.points.shape[1], lag)])


def _random_scan(rng: np.random.Generator, n: int) -> np.ndarray:
    pts = np.column_stack(
        [
            rng.uniform(-70, 70, (n, 2)),
            rng.uniform(-2, 2, n),
            rng.uniform(0, 255, n),
            rng.integers(0, 32, n),
        ]
    )
    pts[0, :2] = (57.5, 0.0)  # kept (planar distance < 58)
    pts[1, :2] = (0.0, -58.5)  # dropped
    return pts


def test_lidar_points_against_devkit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    key, s1, s2 = (_random_scan(rng, n) for n in (40, 30, 20))
    info = _lidar_info(tmp_path, key, [s1, s2])
    scans = [info["lidar_infos"]["LIDAR_TOP"]] + [s["LIDAR_TOP"] for s in info["lidar_sweeps"]]
    ref = np.concatenate([_devkit_points(tmp_path, info, s) for s in scans])
    assert ref.shape[0] < 90  # range cut removed points
    ident = np.eye(4)
    out = lidar_points(
        info, tmp_path, num_sweeps=8, max_points=200, range_cut=58.0, bda=ident, rng=rng
    )
    assert out.shape == (200, 5) and out.dtype == np.float32
    n = ref.shape[0]
    np.testing.assert_allclose(out[:n], ref, atol=1e-3)
    assert (out[n:] == PAD_VALUE).all()
    np.testing.assert_allclose(np.unique(out[:n, 4]), [0.0, 0.05, 0.1], atol=1e-6)
    # Sweep budget: only the first sweep.
    one = lidar_points(
        info, tmp_path, num_sweeps=1, max_points=200, range_cut=58.0, bda=ident, rng=rng
    )
    n1 = int((one[:, 0] != PAD_VALUE).sum())
    np.testing.assert_allclose(one[:n1], ref[:n1], atol=1e-3)
    np.testing.assert_allclose(np.unique(one[:n1, 4]), [0.0, 0.05], atol=1e-6)
    # BEV augmentation on x, y only.
    bda = augment.bda_matrix(augment.BdaParams(rotate=30.0, scale=1.05, flip_dx=True))
    aug = lidar_points(
        info, tmp_path, num_sweeps=8, max_points=200, range_cut=58.0, bda=bda, rng=rng
    )
    np.testing.assert_allclose(aug[:n, :2], ref[:, :2] @ bda[:2, :2].T, atol=1e-3)
    np.testing.assert_allclose(aug[:n, 2:], ref[:, 2:], atol=1e-3)
    # Over budget: a random subset of distinct rows.
    sub = lidar_points(
        info,
        tmp_path,
        num_sweeps=8,
        max_points=25,
        range_cut=58.0,
        bda=ident,
        rng=np.random.default_rng(1),
    )
    assert sub.shape == (25, 5)
    dist = np.abs(sub[:, None, :] - ref[None].astype(np.float32)).max(-1)
    idx = dist.argmin(1)
    assert dist.min(1).max() < 1e-3 and len(set(idx.tolist())) == 25


def test_lidar_without_sweeps_repeats_key(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    key = _random_scan(rng, 10)
    info = _lidar_info(tmp_path, key, [])
    ref = _devkit_points(tmp_path, info, info["lidar_infos"]["LIDAR_TOP"])
    out = lidar_points(
        info, tmp_path, num_sweeps=8, max_points=100, range_cut=58.0, bda=np.eye(4), rng=rng
    )
    n = ref.shape[0]
    np.testing.assert_allclose(out[: 9 * n], np.tile(ref, (9, 1)), atol=1e-3)
    assert (out[9 * n :] == PAD_VALUE).all()


def test_dataset_lidar_and_collate(fixture_root: Path, tmp_path: Path) -> None:
    root = _workdir(tmp_path, fixture_root)
    rng = np.random.default_rng(0)
    info = copy.deepcopy(_infos(fixture_root)[0])
    lid = _lidar_info(root, _random_scan(rng, 30), [_random_scan(rng, 30)])
    info["lidar_infos"], info["lidar_sweeps"] = lid["lidar_infos"], lid["lidar_sweeps"]
    infos = [_shifted(info, "A", 0), _shifted(info, "A", 1)]
    for i in infos:
        i["lidar_infos"] = info["lidar_infos"]
    cfg = _cfg(return_lidar=True, max_points=100, image_size=(32, 88), key_idxes=(-1,))
    ds = NuScenesDataset(cfg, infos, root, train=True, seed=4)
    s = ds[1]
    bda = s.bda.double().numpy()
    scans = [info["lidar_infos"]["LIDAR_TOP"], info["lidar_sweeps"][0]["LIDAR_TOP"]]
    ref = np.concatenate([_devkit_points(root, info, sc) for sc in scans])
    n = ref.shape[0]
    assert s.lidar_points is not None and s.lidar_points.shape == (100, 5)
    np.testing.assert_allclose(
        s.lidar_points[:n, :2].numpy(), ref[:, :2] @ bda[:2, :2].T, atol=1e-3
    )
    np.testing.assert_allclose(s.lidar_points[:n, 2:].numpy(), ref[:, 2:], atol=1e-3)
    batch = collate([ds[0], s])
    assert batch.imgs.shape == (2, 2, 6, 3, 32, 88)
    assert batch.ego_from_camera.shape == batch.ida.shape == (2, 2, 6, 4, 4)
    assert batch.intrinsics.shape == batch.key_from_frame.shape == (2, 2, 6, 4, 4)
    assert batch.bda.shape == (2, 4, 4) and batch.timestamps.shape == (2, 2, 6)
    assert batch.lidar_points is not None and batch.lidar_points.shape == (2, 100, 5)
    torch.testing.assert_close(batch.lidar_points[1], s.lidar_points)
    assert len(batch.gt_boxes) == 2 and batch.gt_boxes[1].shape == (10, 9)
    torch.testing.assert_close(batch.gt_boxes[1], s.gt_boxes)
    assert [m.token for m in batch.metas] == ["A-0", "A-1"]
    assert batch.depth is None
    assert batch.batch_size == 2 and batch.num_frames == 2


# --------------------------------------------------------------------------------------------
# Bad input, build_dataset
# --------------------------------------------------------------------------------------------


def test_missing_or_corrupt_files_raise_data_error(fixture_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(fixture_root / "samples", root / "samples")
    infos = _infos(fixture_root)
    front = root / infos[0]["cam_infos"]["CAM_FRONT"]["filename"]
    front.unlink()
    ds = NuScenesDataset(_cfg(), infos, root, train=False)
    with pytest.raises(DataError, match=re.escape(front.name)):
        ds[0]
    front.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(DataError, match=re.escape(front.name)):
        ds[0]
    shutil.copy(fixture_root / infos[0]["cam_infos"]["CAM_FRONT"]["filename"], front)
    # Truncated point cloud.
    info = copy.deepcopy(infos[0])
    lid = _lidar_info(root, _random_scan(np.random.default_rng(0), 10), [])
    info["lidar_infos"] = lid["lidar_infos"]
    pcd = root / info["lidar_infos"]["LIDAR_TOP"]["filename"]
    pcd.write_bytes(pcd.read_bytes()[:-6])
    ds = NuScenesDataset(_cfg(return_lidar=True), [info], root, train=False)
    with pytest.raises(DataError, match=re.escape(pcd.name)):
        ds[0]


def test_build_dataset_reads_legacy_info_file(fixture_root: Path, tmp_path: Path) -> None:
    info_dir = tmp_path / "infos"
    info_dir.mkdir()
    shutil.copy(fixture_root / "infos.pkl", info_dir / "nuscenes_infos_val.pkl")
    cfg = _cfg(dataroot=str(fixture_root), info_dir=str(info_dir))
    ds = build_dataset(cfg, "val", train=False)
    assert len(ds) == 1 and not ds.train
    assert ds[0].gt_boxes.shape == (10, 9)


def test_synthetic_set_end_to_end(synthetic_root: Path) -> None:
    """Prepared synthetic set: infos via build_dataset, depth GT files, LiDAR sweeps."""
    cfg = DataConfig(
        dataroot=str(synthetic_root),
        image_size=(64, 176),
        key_idxes=(-2,),
        return_depth=True,
        return_lidar=True,
        max_points=60000,
    )
    ds = build_dataset(cfg, "mini_train", train=True)
    assert len(ds) > 2
    s = ds[2]
    assert s.imgs.shape == (2, 6, 3, 64, 176)
    assert s.depth is not None and s.depth.shape == (6, 64, 176)
    assert (s.depth > 0).sum() > 50 and s.depth.max() < 80
    assert s.lidar_points is not None and s.lidar_points.shape == (60000, 5)
    real = s.lidar_points[s.lidar_points[:, 0] != PAD_VALUE]
    assert real.shape[0] > 1000
    assert real[:, 4].min() >= -0.6 and real[:, 4].max() <= 0.6  # time lags of <= 5 sweeps
    assert torch.hypot(real[:, 0], real[:, 1]).max() < 58.0 * 1.05 + 2.0  # cut + bda scale + offset
    gt = convert_gt(ds.infos[2], mean_camera_ego_pose(ds.infos[2]))
    assert s.gt_boxes.shape == (gt.boxes.shape[0], 9)
    np.testing.assert_array_equal(s.gt_labels.numpy(), gt.labels)
    # Frame 1 is two key samples back in the same scene: earlier camera timestamps.
    assert (s.timestamps[1] < s.timestamps[0]).all()


def test_future_sweeps_get_a_negative_time_lag(tmp_path: Path) -> None:
    # METHOD.md 3.4 / quirk 4: column 4 = t_key - t_scan in seconds, so a future sweep (after the
    # key scan, as gen_info's future slots) has a negative lag.
    pts = np.array([[1.0, 2.0, 0.5, 10.0, 3.0], [4.0, -1.0, 0.2, 20.0, 7.0]])
    info = _lidar_info(tmp_path, pts, [pts + 0.1, pts + 0.2])
    key_t = info["lidar_infos"]["LIDAR_TOP"]["timestamp"]
    info["lidar_sweeps"][1]["LIDAR_TOP"]["timestamp"] = key_t + 150_000  # 0.15 s later
    out = lidar_points(
        info,
        tmp_path,
        num_sweeps=2,
        max_points=6,
        range_cut=58.0,
        bda=np.eye(4),
        rng=np.random.default_rng(0),
    )
    np.testing.assert_allclose(out[:, 4], [0.0, 0.0, 0.05, 0.05, -0.15, -0.15], atol=1e-7)


@pytest.mark.parametrize("train", [False, True])
def test_image_pipeline_against_plain_pil(fixture_root: Path, train: bool) -> None:
    # The whole image path (decode, ida resize / crop / flip / rotate, BGR quirk, normalisation)
    # of CAM_FRONT_RIGHT against Pillow and numpy written out here, with the ida the dataset drew.
    from PIL import Image

    infos = _infos(fixture_root)
    cfg = _cfg(image_size=(256, 704))
    ds = NuScenesDataset(cfg, infos, fixture_root, train=train, seed=11)
    item = ds[0]
    ci = CAMERAS.index("CAM_FRONT_RIGHT")
    rng = ds.rng(0)  # the dataset's draws: ida per camera in CAMERAS order, then bda
    params = [augment.sample_ida(rng, cfg, 1600, 900, ds.augment) for _ in CAMERAS][ci]
    if train:
        assert params.resize != 0.44 and params.rotate != 0.0
    rec = infos[0]["cam_infos"]["CAM_FRONT_RIGHT"]
    with Image.open(fixture_root / rec["filename"]) as f:
        img = f.convert("RGB")
    img = img.resize(params.resize_dims, Image.Resampling.BICUBIC).crop(params.crop)
    if params.flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if params.rotate:
        img = img.rotate(params.rotate, resample=Image.Resampling.NEAREST)
    rgb = np.asarray(img, dtype=np.float64)  # [H, W, 3]
    mean = np.array([123.675, 116.28, 103.53])
    std = np.array([58.395, 57.12, 57.375])
    ref = ((rgb[..., ::-1] - mean) / std).transpose(2, 0, 1)  # BGR with RGB statistics
    got = item.imgs[0, ci].double().numpy()
    assert got.shape == ref.shape == (3, 256, 704)
    diff = np.abs(got - ref)
    # the dataset resamples only the kept region (Pillow box): <0.1 % off by one grey level
    assert diff.max() <= 1.0 / 57.12 + 1e-6
    assert (diff > 1e-6).mean() < 1e-3
    assert got[0, 100, 300] == pytest.approx(ref[0, 100, 300], abs=0.02)
