"""Info files: legacy fixture, round trip, bad layouts, and the infos built from a synthetic set
checked field by field against the devkit tables (METHOD.md 3.1)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labeldistill.data.infos import (
    SCHEMA_VERSION,
    info_path,
    load_infos,
    read_info_file,
    save_infos,
)
from labeldistill.errors import DataError
from labeldistill.nuscenes_schema import CAMERA_CHANNELS, LIDAR_CHANNEL


def assert_same(a: Any, b: Any, where: str = "info") -> None:
    """Deep equality of nested dicts/lists/numpy arrays (exact)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


# ---------------------------------------------------------------------------------------------
# legacy fixture, round trip, bad files
# ---------------------------------------------------------------------------------------------


def test_legacy_fixture_loads(fixture_root: Path) -> None:
    infos = load_infos(fixture_root / "infos.pkl")
    assert len(infos) == 1
    info = infos[0]
    assert info["sample_token"] == "e93e98b63d3b40209056d129dc53ceee"
    assert info["timestamp"] == 1531883530449377
    assert set(info["cam_infos"]) == set(CAMERA_CHANNELS)
    assert len(info["cam_infos"]) == 6
    assert len(info["ann_infos"]) == 10
    cats = sorted(a["category_name"] for a in info["ann_infos"])
    assert cats.count("movable_object.trafficcone") == 3
    assert cats.count("vehicle.truck") == 3
    assert cats.count("vehicle.car") == 2
    assert info["cam_infos"]["CAM_FRONT"]["calibrated_sensor"]["camera_intrinsic"][0][0] == (
        pytest.approx(1266.417203046554)
    )
    assert info["lidar_infos"][LIDAR_CHANNEL]["calibrated_sensor"]["translation"] == [
        0.943713,
        0.0,
        1.84023,
    ]
    for ann in info["ann_infos"]:
        assert isinstance(ann["velocity"], np.ndarray) and ann["velocity"].shape == (3,)
    meta = read_info_file(fixture_root / "infos.pkl")
    assert meta.schema_version == 0 and meta.meta == {}


def test_round_trip(fixture_root: Path, tmp_path: Path) -> None:
    infos = load_infos(fixture_root / "infos.pkl")
    path = info_path(tmp_path, "mini_val")
    assert path == tmp_path / "nuscenes_infos_mini_val.pkl"
    save_infos(path, infos, {"version": "v1.0-mini", "split": "mini_val", "dataroot": "/x"})
    loaded = read_info_file(path)
    assert loaded.schema_version == SCHEMA_VERSION
    assert loaded.meta["version"] == "v1.0-mini" and loaded.meta["split"] == "mini_val"
    assert "created" in loaded.meta
    assert_same(infos, loaded.infos)
    # the wrapper on disk: exactly the documented keys, the info dicts untouched
    with open(path, "rb") as f:
        raw = pickle.load(f)
    assert sorted(raw) == ["infos", "meta", "schema_version"]
    assert_same(infos, raw["infos"])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _write_pickle(path: Path, obj: Any) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_unknown_layout_fails(fixture_root: Path, tmp_path: Path) -> None:
    infos = load_infos(fixture_root / "infos.pkl")
    mmdet_style = _write_pickle(tmp_path / "mm.pkl", {"infos": infos, "metadata": {"v": 1}})
    with pytest.raises(DataError) as exc:
        load_infos(mmdet_style)
    msg = _one_line(exc)
    assert "unknown layout" in msg and str(mmdet_style) in msg and "labeldistill prepare" in msg

    scalar = _write_pickle(tmp_path / "n.pkl", 42)
    with pytest.raises(DataError, match="unknown layout"):
        load_infos(scalar)


def test_newer_schema_fails(tmp_path: Path) -> None:
    path = _write_pickle(
        tmp_path / "new.pkl", {"schema_version": SCHEMA_VERSION + 1, "meta": {}, "infos": []}
    )
    with pytest.raises(DataError) as exc:
        load_infos(path)
    assert "newer" in _one_line(exc) and str(path) in str(exc.value)


def test_missing_keys_fail(fixture_root: Path, tmp_path: Path) -> None:
    info = dict(load_infos(fixture_root / "infos.pkl")[0])
    del info["cam_infos"]
    path = _write_pickle(tmp_path / "bad.pkl", [info])
    with pytest.raises(DataError) as exc:
        load_infos(path)
    assert "entry 0 lacks cam_infos" in _one_line(exc)
    path2 = _write_pickle(tmp_path / "bad2.pkl", ["not a dict"])
    with pytest.raises(DataError, match="entry 0 is a str"):
        load_infos(path2)


def test_not_a_pickle_and_missing(tmp_path: Path) -> None:
    text = tmp_path / "infos.pkl"
    text.write_text("hello, I am not a pickle\n")
    with pytest.raises(DataError) as exc:
        load_infos(text)
    assert "not a readable pickle" in _one_line(exc)
    with pytest.raises(DataError, match="does not exist"):
        load_infos(tmp_path / "nope.pkl")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_RAN",))


def test_code_in_pickle_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _write_pickle(tmp_path / "evil.pkl", [_Evil()])
    with pytest.raises(DataError) as exc:
        load_infos(path)
    assert "refusing" in _one_line(exc)
    assert not (tmp_path / "EVIL_RAN").exists()


# ---------------------------------------------------------------------------------------------
# infos of the synthetic set vs the devkit tables (derived independently: table scans sorted
# by timestamp, not the prev/next walks of build_infos)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nusc(synthetic_root: Path):
    from labeldistill.data.nuscenes_reader import open_nuscenes

    return open_nuscenes(synthetic_root, "v1.0-mini")


def _channel_by_scene(nusc: Any, channel: str) -> dict[str, list[dict]]:
    """sample_data of one channel grouped by scene, sorted by timestamp."""
    out: dict[str, list[dict]] = {}
    for sd in nusc.sample_data:
        if sd["channel"] == channel:
            scene = nusc.get("sample", sd["sample_token"])["scene_token"]
            out.setdefault(scene, []).append(sd)
    for rows in out.values():
        rows.sort(key=lambda r: r["timestamp"])
    return out


@pytest.mark.parametrize("split", ["mini_train", "mini_val"])
def test_infos_match_devkit(synthetic_root: Path, nusc: Any, split: str) -> None:
    from nuscenes.utils.splits import create_splits_scenes

    infos = load_infos(info_path(synthetic_root, split))
    names = set(create_splits_scenes()[split])
    scene_rank = {s["token"]: i for i, s in enumerate(nusc.scene) if s["name"] in names}
    expected = sorted(
        (s for s in nusc.sample if s["scene_token"] in scene_rank),
        key=lambda s: (scene_rank[s["scene_token"]], s["timestamp"]),
    )
    assert [i["sample_token"] for i in infos] == [s["token"] for s in expected]
    assert len(infos) == len(names) * 4  # SYNTH_SAMPLES_PER_SCENE in conftest

    lidar_rows = _channel_by_scene(nusc, LIDAR_CHANNEL)
    cam_rows = {cam: _channel_by_scene(nusc, cam) for cam in CAMERA_CHANNELS}
    full_future = 0
    n_moving = 0
    for info, sample in zip(infos, expected):
        assert info["timestamp"] == sample["timestamp"]
        assert info["scene_token"] == sample["scene_token"]
        assert list(info["cam_infos"]) == list(CAMERA_CHANNELS)
        for cam in CAMERA_CHANNELS:
            sd = nusc.get("sample_data", sample["data"][cam])
            ci = info["cam_infos"][cam]
            assert ci["filename"] == sd["filename"] and ci["filename"].startswith(f"samples/{cam}/")
            assert ci["timestamp"] == sd["timestamp"] and ci["is_key_frame"] is True
            assert (ci["width"], ci["height"]) == (sd["width"], sd["height"])
            assert ci["ego_pose"] == nusc.get("ego_pose", sd["ego_pose_token"])
            assert ci["calibrated_sensor"] == nusc.get(
                "calibrated_sensor", sd["calibrated_sensor_token"]
            )
        lsd = nusc.get("sample_data", sample["data"][LIDAR_CHANNEL])
        li = info["lidar_infos"][LIDAR_CHANNEL]
        assert list(li) == [
            "sample_token",
            "ego_pose",
            "timestamp",
            "filename",
            "calibrated_sensor",
        ]
        assert li["filename"] == lsd["filename"] and li["timestamp"] == lsd["timestamp"]
        assert li["ego_pose"] == nusc.get("ego_pose", lsd["ego_pose_token"])
        assert li["calibrated_sensor"] == nusc.get(
            "calibrated_sensor", lsd["calibrated_sensor_token"]
        )

        # LiDAR sweeps: <= 5 past (same sample) newest first, then <= 5 future only if 5 past
        rows = lidar_rows[sample["scene_token"]]
        k = [r["token"] for r in rows].index(lsd["token"])
        past = []
        for r in reversed(rows[:k]):
            if r["sample_token"] != sample["token"] or len(past) == 5:
                break
            past.append(r)
        want = past + (rows[k + 1 : k + 6] if len(past) == 5 else [])
        got = [s[LIDAR_CHANNEL] for s in info["lidar_sweeps"]]
        assert [g["filename"] for g in got] == [w["filename"] for w in want]
        for g, w in zip(got, want):
            assert g["timestamp"] == w["timestamp"] and g["is_key_frame"] == w["is_key_frame"]
            assert g["ego_pose"] == nusc.get("ego_pose", w["ego_pose_token"])
            # deviation (docs/deviations.md): the sweep's own calibration, not a camera's
            assert g["calibrated_sensor"] == nusc.get(
                "calibrated_sensor", w["calibrated_sensor_token"]
            )
        full_future += len(want) > 5

        # camera sweeps: per camera <= 6 past images of the same sample
        for j, slot in enumerate(info["cam_sweeps"]):
            for cam in CAMERA_CHANNELS:
                crow = cam_rows[cam][sample["scene_token"]]
                kc = [r["token"] for r in crow].index(sample["data"][cam])
                mine = [r for r in reversed(crow[:kc])]
                n = 0
                for r in mine:
                    if r["sample_token"] != sample["token"]:
                        break
                    n += 1
                assert (cam in slot) == (n > j)
                if cam in slot:
                    assert slot[cam]["filename"] == mine[j]["filename"]

        # annotations: the sample's records plus the devkit velocity (NaN -> 0)
        assert [a["token"] for a in info["ann_infos"]] == sample["anns"]
        for ann in info["ann_infos"]:
            record = nusc.get("sample_annotation", ann["token"])
            assert {k: v for k, v in ann.items() if k != "velocity"} == record
            v = nusc.box_velocity(ann["token"])
            v = np.zeros(3) if np.isnan(v).any() else v
            assert ann["velocity"].dtype == np.float64
            np.testing.assert_array_equal(ann["velocity"], v)
            n_moving += bool(np.linalg.norm(v[:2]) > 0.5)
    assert full_future > 0, "no sample exercised the future-sweep branch"
    assert n_moving > 0


def test_lidar_sweep_truncation_rules(nusc: Any) -> None:
    """Fewer than 5 past sweeps of the key's sample -> no future sweeps; future sweeps stop at
    a sweep of another scene. Checked by re-labelling sweeps in the loaded tables."""
    from labeldistill.data.infos import sample_info

    scene = nusc.scene[0]
    sample = nusc.get("sample", nusc.get("sample", scene["first_sample_token"])["next"])
    key = nusc.get("sample_data", sample["data"][LIDAR_CHANNEL])
    past = [nusc.get("sample_data", key["prev"])]
    for _ in range(4):
        past.append(nusc.get("sample_data", past[-1]["prev"]))
    future = [nusc.get("sample_data", key["next"])]
    for _ in range(4):
        future.append(nusc.get("sample_data", future[-1]["next"]))
    base = sample_info(nusc, sample)["lidar_sweeps"]
    assert [s[LIDAR_CHANNEL]["filename"] for s in base] == [r["filename"] for r in past + future]
    other_scene_sample = nusc.get("sample", nusc.scene[1]["first_sample_token"])
    saved = (past[2]["sample_token"], future[3]["sample_token"])
    try:
        # a sweep of another sample in slot 2: past = 2 sweeps, future dropped
        past[2]["sample_token"] = sample["prev"]
        got = sample_info(nusc, sample)["lidar_sweeps"]
        assert [s[LIDAR_CHANNEL]["filename"] for s in got] == [r["filename"] for r in past[:2]]
        # 5 past again; the 4th future sweep belongs to another scene: 3 future survive
        past[2]["sample_token"] = saved[0]
        future[3]["sample_token"] = other_scene_sample["token"]
        got = sample_info(nusc, sample)["lidar_sweeps"]
        want = past + future[:3]
        assert [s[LIDAR_CHANNEL]["filename"] for s in got] == [r["filename"] for r in want]
        assert [s[LIDAR_CHANNEL]["is_key_frame"] for s in got] == [False] * 8
    finally:
        past[2]["sample_token"], future[3]["sample_token"] = saved
