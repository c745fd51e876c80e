"""``prepare`` on the synthetic set: info files and depth GT for every split, the depth files
equal ``depth_points`` and reproject onto the key scan, reruns skip what is done, the pool
gives the same bytes as the in-process path, an interrupted write leaves no file."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from labeldistill.data.depth_gt import depth_gt_path, depth_points, read_depth_gt
from labeldistill.data.infos import info_path, load_infos, read_info_file
from labeldistill.data.prepare import prepare
from labeldistill.data.readers import load_points
from labeldistill.errors import DataError
from labeldistill.nuscenes_schema import CAMERA_CHANNELS, LIDAR_CHANNEL

SPLITS = {"mini_train": 8, "mini_val": 2}  # scenes per split of v1.0-mini
PER_SCENE = 4  # SYNTH_SAMPLES_PER_SCENE in conftest


def linked_copy(src: Path, dst: Path, *, prepared: bool = False) -> Path:
    """Copy of a dataset root made of hard links (cheap); files to damage must be unlinked and
    rewritten, never written in place. Without ``prepared``, info files and depth GT are left
    out."""
    ignore = None if prepared else shutil.ignore_patterns("nuscenes_infos_*.pkl", "depth_gt")

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, ignore=ignore, copy_function=link)
    return dst


def _tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_prepared_synthetic_set(synthetic_root: Path) -> None:
    """What the session fixture's prepare() wrote: both splits, 6 depth files per sample."""
    for split, scenes in SPLITS.items():
        f = read_info_file(info_path(synthetic_root, split))
        assert len(f.infos) == scenes * PER_SCENE
        assert f.meta["version"] == "v1.0-mini" and f.meta["split"] == split
        assert f.meta["dataroot"] == str(synthetic_root.resolve())
    depth_dir = synthetic_root / "depth_gt"
    assert len(list(depth_dir.glob("*.jpg.bin"))) == 6 * PER_SCENE * sum(SPLITS.values())
    assert not _tmp_files(synthetic_root)


@pytest.fixture(scope="module")
def copy_root(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared, hard-linked copy of the synthetic set for the rerun tests."""
    return linked_copy(synthetic_root, tmp_path_factory.mktemp("rerun") / "root", prepared=True)


def test_depth_files_equal_depth_points(synthetic_root: Path) -> None:
    infos = load_infos(info_path(synthetic_root, "mini_val"))
    for info in infos[:: len(infos) // 3]:
        expected = depth_points(info, synthetic_root)
        total = 0
        for cam in CAMERA_CHANNELS:
            got = read_depth_gt(depth_gt_path(synthetic_root, info["cam_infos"][cam]["filename"]))
            np.testing.assert_array_equal(got, expected[cam])
            total += len(got)
        assert total > 100  # the synthetic LiDAR sees something in the cameras


def test_rerun_skips_done_files(copy_root: Path) -> None:
    depth_files = sorted((copy_root / "depth_gt").glob("*.bin"))
    before = {p: p.stat().st_mtime_ns for p in depth_files}
    summary = prepare(copy_root, "v1.0-mini", workers=1)
    n = 6 * PER_SCENE * sum(SPLITS.values())
    assert sum(s.depth_skipped for s in summary.splits) == n
    assert sum(s.depth_written for s in summary.splits) == 0
    assert {p: p.stat().st_mtime_ns for p in depth_files} == before
    assert [s.samples for s in summary.splits] == [k * PER_SCENE for k in SPLITS.values()]

    # one file deleted, one truncated, one sample's scan newer than its depth files
    info = load_infos(info_path(copy_root, "mini_val"))[1]
    gone = depth_gt_path(copy_root, info["cam_infos"]["CAM_FRONT"]["filename"])
    good = read_depth_gt(gone)
    gone.unlink()
    cut = depth_gt_path(copy_root, info["cam_infos"]["CAM_BACK"]["filename"])
    data = cut.read_bytes()
    cut.unlink()
    cut.write_bytes(data[:-5])
    other = load_infos(info_path(copy_root, "mini_train"))[0]
    pcd = copy_root / other["lidar_infos"][LIDAR_CHANNEL]["filename"]
    data = pcd.read_bytes()
    pcd.unlink()  # break the hard link before touching the mtime
    pcd.write_bytes(data)
    newer = max(before.values()) + 10**9
    os.utime(pcd, ns=(newer, newer))

    summary = prepare(copy_root, "v1.0-mini", workers=1)
    assert summary.by_split("mini_val").depth_written == 2
    assert summary.by_split("mini_train").depth_written == 6
    assert sum(s.depth_skipped for s in summary.splits) == n - 8
    np.testing.assert_array_equal(read_depth_gt(gone), good)
    assert cut.stat().st_size % 12 == 0
    assert not _tmp_files(copy_root)


def test_pool_matches_in_process(synthetic_root: Path, tmp_path: Path) -> None:
    root = linked_copy(synthetic_root, tmp_path / "root")
    out = tmp_path / "infos"
    summary = prepare(root, "v1.0-mini", out_dir=out, workers=2)
    assert sum(s.depth_written for s in summary.splits) == 6 * PER_SCENE * sum(SPLITS.values())
    for split in SPLITS:
        assert not info_path(root, split).exists()
        assert load_infos(info_path(out, split)) is not None
    for p in sorted((synthetic_root / "depth_gt").glob("*.bin")):
        assert (root / "depth_gt" / p.name).read_bytes() == p.read_bytes(), p.name
    mine = pickle.loads(info_path(out, "mini_val").read_bytes())["infos"]
    ref = pickle.loads(info_path(synthetic_root, "mini_val").read_bytes())["infos"]
    assert [i["sample_token"] for i in mine] == [i["sample_token"] for i in ref]


def test_no_depth_and_empty_split(synthetic_root: Path, tmp_path: Path) -> None:
    root = linked_copy(synthetic_root, tmp_path / "root")
    summary = prepare(root, "v1.0-mini", workers=1, depth=False)
    assert not (root / "depth_gt").exists()
    assert summary.by_split("mini_val").samples == 2 * PER_SCENE
    # a version folder whose scenes are not the official ones of its splits
    (root / "v1.0-mini").rename(root / "v1.0-test")
    with pytest.raises(DataError) as exc:
        prepare(root, "v1.0-test", workers=1)
    msg = str(exc.value)
    assert "\n" not in msg and str(root / "v1.0-test" / "scene.json") in msg and "test" in msg
    assert not info_path(root, "test").exists()


def test_interrupted_info_write_leaves_nothing(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import labeldistill.io as dio

    root = linked_copy(synthetic_root, tmp_path / "root")

    def dump_then_die(obj, f, protocol=None):
        f.write(b"\x80\x05partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(dio.pickle, "dump", dump_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare(root, "v1.0-mini", workers=1, depth=False)
    assert not list(root.glob("nuscenes_infos_*"))
    assert not _tmp_files(root)


def test_lidar_scan_is_validated(synthetic_root: Path, tmp_path: Path) -> None:
    root = linked_copy(synthetic_root, tmp_path / "root")
    info = load_infos(info_path(synthetic_root, "mini_train"))[5]
    pcd = root / info["lidar_infos"][LIDAR_CHANNEL]["filename"]
    data = pcd.read_bytes()
    assert load_points(pcd).shape[1] == 5
    pcd.unlink()
    pcd.write_bytes(data[:-7])
    with pytest.raises(DataError, match="truncated") as exc:
        prepare(root, "v1.0-mini", workers=1, depth=False)
    assert str(pcd) in str(exc.value)
    assert not list(root.glob("nuscenes_infos_*"))


def test_split_scenes() -> None:
    from labeldistill.data.nuscenes_reader import split_scenes
    from labeldistill.errors import UserError

    assert split_scenes("v1.0-mini", "mini_val") == ["scene-0103", "scene-0916"]
    assert len(split_scenes("v1.0-mini", "mini_train")) == 8
    assert len(split_scenes("v1.0-trainval", "train")) == 700
    assert len(split_scenes("v1.0-trainval", "val")) == 150
    assert len(split_scenes("v1.0-test", "test")) == 150
    with pytest.raises(UserError) as exc:
        split_scenes("v1.0-mini", "val")
    assert "mini_train, mini_val" in str(exc.value)
    with pytest.raises(UserError, match="v1.0-mini, v1.0-trainval, v1.0-test"):
        split_scenes("v2.0", "val")


def test_open_nuscenes_names_missing_table(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from labeldistill.data.nuscenes_reader import open_nuscenes

    root = linked_copy(synthetic_root, tmp_path / "root")
    nusc = open_nuscenes(root, "v1.0-mini")
    assert len(nusc.scene) == 10
    assert capsys.readouterr().out == ""  # the devkit's prints are silenced
    (root / "v1.0-mini" / "sample_data.json").unlink()
    with pytest.raises(DataError) as exc:
        open_nuscenes(root, "v1.0-mini")
    assert str(root / "v1.0-mini" / "sample_data.json") in str(exc.value)
    (root / "v1.0-mini" / "scene.json").unlink()
    (root / "v1.0-mini" / "scene.json").write_text("[{")
    (root / "v1.0-mini" / "sample_data.json").write_text("[]")
    with pytest.raises(DataError, match="scene.json is not valid JSON"):
        open_nuscenes(root, "v1.0-mini")


def test_check_image_fast(fixture_root: Path, tmp_path: Path) -> None:
    from labeldistill.data.readers import check_image, check_image_fast

    jpg = next((fixture_root / "samples" / "CAM_FRONT").glob("*.jpg"))
    assert check_image_fast(jpg) == check_image(jpg) == (1600, 900)  # full size, not 1/8
    data = jpg.read_bytes()
    for name, bad in [("cut.jpg", data[: len(data) * 3 // 4]), ("txt.jpg", b"not an image")]:
        (tmp_path / name).write_bytes(bad)
        with pytest.raises(DataError, match="corrupt") as exc:
            check_image_fast(tmp_path / name)
        assert str(tmp_path / name) in str(exc.value)
