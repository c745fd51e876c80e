"""What each stage's datasets open (issue 11 item 7): no LiDAR scan at evaluation of a
LabelDistill student, no image decoded for the LiDAR teacher and the label encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from labeldistill.config import load_config
from labeldistill.data import dataset as dataset_mod
from labeldistill.data import lidar as lidar_mod
from labeldistill.structures import CAMERAS
from labeldistill.training.run import _datamodule, _module


@pytest.fixture()
def opened(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    counts: dict[str, list[str]] = {"images": [], "scans": []}
    load_image, load_points = dataset_mod.load_image, lidar_mod.load_points

    def count_image(path):
        counts["images"].append(str(path))
        return load_image(path)

    def count_points(path):
        counts["scans"].append(str(path))
        return load_points(path)

    monkeypatch.setattr(dataset_mod, "load_image", count_image)
    monkeypatch.setattr(lidar_mod, "load_points", count_points)
    return counts


def _reset(counts: dict[str, list[str]]) -> None:
    counts["images"].clear()
    counts["scans"].clear()


def test_labeldistill_eval_opens_no_lidar_scan(synthetic_root: Path, opened) -> None:
    cfg = load_config("labeldistill_tiny", [f"data.dataroot={synthetic_root}"])
    assert cfg.data.return_lidar and cfg.data.lidar_sweeps == 2
    dm = _datamodule(cfg, _module(cfg))
    item = dm.eval_dataset[3]
    assert opened["scans"] == [] and item.lidar_points is None
    frames = 1 + len(cfg.data.key_idxes)
    # each frame's six images (a frame that fell back to the key sample reuses its images)
    assert len(opened["images"]) == len(set(opened["images"])) <= frames * len(CAMERAS)
    assert len(opened["images"]) >= len(CAMERAS)
    _reset(opened)
    item = dm.train_dataset[3]  # training still reads key scan + 2 sweeps for the teacher
    assert len(opened["scans"]) == 3 and item.lidar_points is not None
    assert item.imgs.shape[-2:] == tuple(cfg.data.image_size)


def test_lidar_teacher_and_label_encoder_decode_no_image(synthetic_root: Path, opened) -> None:
    teacher = load_config("centerpoint_tiny", [f"data.dataroot={synthetic_root}"])
    dm = _datamodule(teacher, _module(teacher))
    for ds in (dm.train_dataset, dm.eval_dataset):
        _reset(opened)
        item = ds[2]
        assert opened["images"] == []
        assert item.imgs.shape == (1, len(CAMERAS), 3, 0, 0)
        assert len(opened["scans"]) == 1 + teacher.data.lidar_sweeps
        assert item.lidar_points is not None and torch.isfinite(item.ida).all()
    label = load_config("labeldistill_step1_tiny", [f"data.dataroot={synthetic_root}"])
    dm = _datamodule(label, _module(label))
    _reset(opened)
    item = dm.train_dataset[2]
    assert opened == {"images": [], "scans": []} and item.gt_boxes.shape[1] == 9
    # the paper teacher config reads no previous key frame either
    assert load_config("centerpoint_vox01_128x128_20e_10sweeps").data.key_idxes == ()
