"""The synthetic nuScenes-format dataset: devkit compatibility, geometry, tracks, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from labeldistill.errors import UserError
from labeldistill.nuscenes_schema import CAMERA_CHANNELS, MINI_SCENES, TABLES
from labeldistill.structures import CLASSES
from labeldistill.synth import world as W
from labeldistill.synth.camera import render_camera
from labeldistill.synth.generate import SynthConfig, generate
from labeldistill.synth.objects import MEAN_SIZE

# One worker builds this module's own synthetic set (with pytest-xdist --dist loadgroup).
pytestmark = pytest.mark.xdist_group("synthetic_own")

CFG = SynthConfig(seed=3, samples_per_scene=2, image_width=352, image_height=198)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "nusc", CFG, workers=1)


@pytest.fixture(scope="module")
def nusc(synth_root: Path):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version="v1.0-mini", dataroot=str(synth_root), verbose=False)


def _key_points_global(nusc, sample) -> np.ndarray:
    """Key LiDAR scan in the global frame, transformed the devkit's way -> [3, P]."""
    from nuscenes.utils.data_classes import LidarPointCloud
    from pyquaternion import Quaternion

    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    pc = LidarPointCloud.from_file(nusc.get_sample_data_path(sd["token"]))
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    pc.rotate(Quaternion(cs["rotation"]).rotation_matrix)
    pc.translate(np.array(cs["translation"]))
    pc.rotate(Quaternion(pose["rotation"]).rotation_matrix)
    pc.translate(np.array(pose["translation"]))
    return pc.points[:3]


def test_tables_scenes_and_splits(nusc, synth_root: Path) -> None:
    from nuscenes.utils import splits

    assert sorted(p.stem for p in (synth_root / "v1.0-mini").glob("*.json")) == sorted(TABLES)
    names = [s["name"] for s in nusc.scene]
    assert sorted(names) == sorted(splits.mini_train + splits.mini_val)
    assert len(nusc.sample) == len(MINI_SCENES) * CFG.samples_per_scene
    for rec in nusc.map:
        assert (synth_root / rec["filename"]).is_file()
    assert {c["channel"] for c in nusc.sensor} == {
        "LIDAR_TOP", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK",
        "CAM_BACK_LEFT", "CAM_FRONT_LEFT",
    }  # fmt: skip
    assert [v["level"] for v in nusc.visibility] == ["v0-40", "v40-60", "v60-80", "v80-100"]
    # every detection class is present, under its nuScenes category name
    from nuscenes.eval.detection.utils import category_to_detection_name

    det = {category_to_detection_name(a["category_name"]) for a in nusc.sample_annotation}
    assert det == set(CLASSES)


def test_key_samples_2hz_and_lidar_sweeps_20hz(nusc) -> None:
    for scene in nusc.scene:
        sample = nusc.get("sample", scene["first_sample_token"])
        nxt = nusc.get("sample", sample["next"])
        assert nxt["timestamp"] - sample["timestamp"] == 500_000
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        assert sd["is_key_frame"] and sd["filename"].startswith("samples/LIDAR_TOP/")
        chain = []
        while sd["next"]:
            sd = nusc.get("sample_data", sd["next"])
            chain.append(sd)
            if sd["is_key_frame"]:
                break
        assert [c["is_key_frame"] for c in chain] == [False] * 9 + [True]
        assert all(c["filename"].startswith("sweeps/LIDAR_TOP/") for c in chain[:-1])
        assert np.all(np.diff([sample["timestamp"]] + [c["timestamp"] for c in chain]) == 50_000)
        assert chain[-1]["token"] == nxt["data"]["LIDAR_TOP"]


def test_images_decode_at_requested_size(nusc, synth_root: Path) -> None:
    from PIL import Image

    sample = nusc.sample[0]
    for cam in ("CAM_FRONT", "CAM_BACK", "CAM_FRONT_LEFT"):
        sd = nusc.get("sample_data", sample["data"][cam])
        with Image.open(synth_root / sd["filename"]) as img:
            img.load()
            assert img.size == (CFG.image_width, CFG.image_height)
            arr = np.asarray(img)
        assert arr.std() > 10  # not blank
        assert (sd["width"], sd["height"]) == (CFG.image_width, CFG.image_height)


def test_num_lidar_pts_is_what_points_in_box_counts(nusc) -> None:
    from nuscenes.utils.geometry_utils import points_in_box

    checked = positive = 0
    for sample in nusc.sample:
        pts = _key_points_global(nusc, sample)
        for ann_token in sample["anns"]:
            box = nusc.get_box(ann_token)
            n = int(points_in_box(box, pts).sum())
            assert n == nusc.get("sample_annotation", ann_token)["num_lidar_pts"], ann_token
            checked += 1
            positive += n > 0
    assert checked > 300 and positive > 0.7 * checked


def test_counts_per_sample_and_ranges(nusc) -> None:
    for sample in nusc.sample:
        assert W.MIN_PER_SAMPLE <= len(sample["anns"]) <= W.MAX_PER_SAMPLE
        pose = nusc.get(
            "ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"]
        )
        for tok in sample["anns"]:
            ann = nusc.get("sample_annotation", tok)
            d = np.hypot(*(np.array(ann["translation"][:2]) - pose["translation"][:2]))
            assert 3.0 <= d <= W.ANNOTATION_RANGE + 1e-6


def test_far_objects_get_fewer_points(nusc) -> None:
    near, far = [], []
    for sample in nusc.sample:
        pose = nusc.get(
            "ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"]
        )
        for tok in sample["anns"]:
            ann = nusc.get("sample_annotation", tok)
            if ann["category_name"] != "vehicle.car":
                continue
            d = np.hypot(*(np.array(ann["translation"][:2]) - pose["translation"][:2]))
            (near if d < 20 else far if d > 35 else []).append(ann["num_lidar_pts"])
    assert len(near) > 10 and len(far) > 10
    assert np.mean(near) > 4 * np.mean(far)
    assert min(far) < 5  # sparse or empty far away, like the real data


def test_projected_corners_of_visible_boxes_fall_inside_an_image(nusc) -> None:
    """Every annotation the renderer reports as at least 40 % visible (visibility token >= 2)
    has projected corners inside some camera image, using the devkit's projection of the
    written boxes, calibration and camera ego poses; and a box whose corners are all in front
    of a camera and project inside its image is found by the devkit in that camera."""
    from nuscenes.utils.geometry_utils import BoxVisibility

    checked = 0
    for sample in nusc.sample[:8]:
        in_some_image: set[str] = set()
        for cam in CAMERA_CHANNELS:
            _, boxes, _ = nusc.get_sample_data(sample["data"][cam], box_vis_level=BoxVisibility.ANY)
            in_some_image |= {b.token for b in boxes}
        for tok in sample["anns"]:
            ann = nusc.get("sample_annotation", tok)
            if int(ann["visibility_token"]) >= 2:
                assert tok in in_some_image
                checked += 1
    assert checked > 50


def test_rendered_pixels_lie_in_projected_annotation_boxes(nusc) -> None:
    """Renderer and tables agree: the pixels where a static annotated object is the nearest
    surface lie inside the bounding rectangle of its devkit box projected with the written
    calibration and camera ego pose (moving objects move between the camera and the LiDAR
    timestamps, as on the real car, so they are left out)."""
    from nuscenes.utils.geometry_utils import BoxVisibility, view_points

    from labeldistill.geometry import pose_matrix

    checked = 0
    for scene_index, cam in [
        (i, c) for i in (0, 3, 6) for c in ("CAM_FRONT", "CAM_BACK_LEFT", "CAM_BACK")
    ]:
        world = W.build_world(CFG.seed, scene_index, CFG.samples_per_scene)
        scene = next(s for s in nusc.scene if s["name"] == MINI_SCENES[scene_index][0])
        sample = nusc.get("sample", scene["first_sample_token"])
        sd = nusc.get("sample_data", sample["data"][cam])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        t = (sd["timestamp"] - sample["timestamp"]) / 1e6
        k = np.array(cs["camera_intrinsic"])
        out = render_camera(
            world,
            t,
            pose_matrix(cs),
            k,
            CFG.image_width,
            CFG.image_height,
            np.random.default_rng(0),
        )
        _, boxes, _ = nusc.get_sample_data(sd["token"], box_vis_level=BoxVisibility.NONE)
        for box in boxes:
            ann = nusc.get("sample_annotation", box.token)
            pos = np.array(ann["translation"][:2])
            i = int(
                np.argmin(
                    [np.hypot(*(o.p0 - pos)) if o.cls >= 0 else np.inf for o in world.objects]
                )
            )
            obj = world.objects[i]
            if obj.speed > 0 or not (out.object_ids == i).any() or box.corners()[2].min() <= 0.1:
                continue
            uv = view_points(box.corners(), k, normalize=True)[:2]
            rows, cols = np.nonzero(out.object_ids == i)
            assert cols.min() + 0.5 >= uv[0].min() - 0.01 and cols.max() + 0.5 <= uv[0].max() + 0.01
            assert rows.min() + 0.5 >= uv[1].min() - 0.01 and rows.max() + 0.5 <= uv[1].max() + 0.01
            checked += 1
    assert checked >= 5


def test_tracks_are_continuous(nusc) -> None:
    for inst in nusc.instance:
        tok = inst["first_annotation_token"]
        anns = []
        while tok:
            anns.append(nusc.get("sample_annotation", tok))
            tok = anns[-1]["next"]
        assert len(anns) == inst["nbr_annotations"]
        assert anns[-1]["token"] == inst["last_annotation_token"]
        for a, b in zip(anns, anns[1:]):
            assert b["prev"] == a["token"]
            assert nusc.get("sample", a["sample_token"])["next"] == b["sample_token"]
            assert a["instance_token"] == b["instance_token"] == inst["token"]


def test_box_velocity_agrees_with_true_velocity(nusc) -> None:
    """The devkit's finite differences equal the simulated constant velocity up to the 1 mm
    rounding of the written translations over 0.5 s (<= 2 * 0.5e-3 / 0.5 = 2e-3 m/s)."""
    worlds = {}
    checked = moving = 0
    for scene_index, (name, _) in enumerate(MINI_SCENES):
        worlds[name] = W.build_world(CFG.seed, scene_index, CFG.samples_per_scene)
    for ann in nusc.sample_annotation:
        sample = nusc.get("sample", ann["sample_token"])
        scene = nusc.get("scene", sample["scene_token"])
        world = worlds[scene["name"]]
        t = (
            sample["timestamp"] - nusc.get("sample", scene["first_sample_token"])["timestamp"]
        ) / 1e6
        pos = np.array(ann["translation"][:2])
        dist = [np.hypot(*(o.center(t)[:2] - pos)) if o.cls >= 0 else np.inf for o in world.objects]
        obj = world.objects[int(np.argmin(dist))]
        assert min(dist) < 1e-3
        v = nusc.box_velocity(ann["token"])[:2]
        if ann["prev"] or ann["next"]:
            np.testing.assert_allclose(v, obj.velocity, atol=2.5e-3)
            checked += 1
            moving += obj.speed > 0.5
        attr = [nusc.get("attribute", a)["name"] for a in ann["attribute_tokens"]]
        assert attr == ([obj.attribute] if obj.attribute else [])
    assert checked > 100 and moving > 10


def test_sizes_vary_within_class(nusc) -> None:
    from nuscenes.eval.detection.utils import category_to_detection_name

    lengths = [
        a["size"][1]
        for a in nusc.sample_annotation
        if category_to_detection_name(a["category_name"]) == "car"
    ]
    mean = MEAN_SIZE["car"][1]
    assert min(lengths) < 0.93 * mean and max(lengths) > 1.07 * mean
    assert min(lengths) > 0.8 * mean and max(lengths) < 1.2 * mean


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_deterministic_whatever_the_workers(tmp_path: Path) -> None:
    """Same seed -> byte-identical tables and files, in one process or in a pool (a reduced
    configuration keeps the two extra runs cheap)."""
    cfg = SynthConfig(
        seed=5, samples_per_scene=2, image_width=96, image_height=54, lidar_azimuth_steps=180
    )
    one = _digest(generate(tmp_path / "one", cfg, workers=1))
    two = _digest(generate(tmp_path / "two", cfg, workers=2))
    assert one == two
    # 13 tables, 4 map PNGs, the config; per scene 2 key frames x 7 sensors + 19 LiDAR sweeps
    # (5 before, 9 between, 5 after the key frames)
    assert len(one) == 13 + 4 + 1 + 10 * (2 * 7 + 19)
    # another seed, another world
    a, b = (W.build_world(seed, 0, 2) for seed in (cfg.seed, cfg.seed + 1))
    assert not np.allclose(a.road.origin, b.road.origin)


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "something.txt").write_text("x")
    with pytest.raises(UserError, match="--overwrite"):
        generate(out, CFG, workers=1)
    assert (out / "something.txt").read_text() == "x"
    assert not any(p.name.startswith(".taken") for p in tmp_path.iterdir())  # nothing half-written
    with pytest.raises(UserError, match="samples-per-scene"):
        generate(tmp_path / "bad", SynthConfig(samples_per_scene=0), workers=1)


def test_cli_refuses_existing_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from labeldistill.cli import main

    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["synth", "--out", str(out), "--samples-per-scene", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "--overwrite" in err[0]
