"""Shipped configs: all load, unknown keys fail, overrides, name vs path, paper values."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from labeldistill.config import load_config, shipped_configs
from labeldistill.errors import ConfigError
from labeldistill.models.build import bev_trunk_in_channels, build_student, num_frames

EXPECTED = {
    "bevdepth_r50_256x704_128x128_e24_2key",
    "bevdepth_tiny",
    "centerpoint_tiny",
    "centerpoint_vox01_128x128_20e_10sweeps",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_shipped_config_loads(name: str) -> None:
    assert set(shipped_configs()) >= EXPECTED
    cfg = load_config(name)
    assert cfg.name == name


def test_unknown_key_fails_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("base: bevdepth_tiny\nstudent:\n  image_backbone:\n    dept: 18\n")
    with pytest.raises(ConfigError, match="student.image_backbone.dept"):
        load_config(path)
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config("bevdepth_tiny", ["optim.lrr=1"])


def test_overrides_and_types() -> None:
    cfg = load_config(
        "bevdepth_tiny",
        ["trainer.devices=8", "data.dataroot=/x/y", "optim.milestones=[3, 5]", "data.key_idxes=[]"],
    )
    assert cfg.trainer.devices == 8
    assert cfg.data.dataroot == "/x/y"
    assert cfg.optim.milestones == (3, 5)
    assert num_frames(cfg) == 1
    with pytest.raises(ConfigError, match="trainer.devices"):
        load_config("bevdepth_tiny", ["trainer.devices=two"])


def test_name_and_path_give_the_same_config() -> None:
    path = Path(str(resources.files("labeldistill") / "configs" / "bevdepth_tiny.yaml"))
    assert load_config(str(path)) == load_config("bevdepth_tiny")
    assert load_config("bevdepth_tiny.yaml") == load_config("bevdepth_tiny")
    with pytest.raises(ConfigError, match="not found"):
        load_config("no_such_config")


def test_paper_baseline_values_and_build() -> None:
    cfg = load_config("bevdepth_r50_256x704_128x128_e24_2key")
    assert cfg.stage == "student"
    assert cfg.data.key_idxes == (-2, -4) and num_frames(cfg) == 3
    assert cfg.data.image_size == (256, 704)
    assert cfg.grid.size_x == cfg.grid.size_y == 128 and cfg.grid.num_depth_bins == 112
    assert cfg.student.image_backbone.depth == 50 and cfg.student.image_backbone.pretrained
    assert cfg.student.view_transform.context_channels == 150
    assert bev_trunk_in_channels(cfg) == 450
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.backbone_lr_mult) == (4e-4, 1e-2, 0.5)
    assert cfg.optim.milestones == (19, 23) and cfg.trainer.max_epochs == 24
    assert cfg.data.batch_size == 4 and cfg.trainer.ema_decay == 0.999
    assert cfg.student.head.code_weights == (1.0,) * 10
    model = build_student(cfg)  # random init: ImageNet weights are loaded by training only
    assert tuple(model.head.trunk.conv1.weight.shape) == (300, 450, 7, 7)


def test_teacher_configs() -> None:
    paper = load_config("centerpoint_vox01_128x128_20e_10sweeps")
    assert paper.stage == "lidar_teacher" and paper.data.return_lidar
    assert (paper.optim.lr, paper.optim.weight_decay) == (1e-4, 1e-2)
    assert paper.optim.milestones == (16, 19) and paper.trainer.max_epochs == 20
    assert paper.lidar_teacher.voxel_size == (0.1, 0.1, 0.2)
    tiny = load_config("centerpoint_tiny")
    student = load_config("bevdepth_tiny")
    assert tiny.grid == student.grid  # the teacher and the student share the BEV grid
    assert tiny.data.dataroot == student.data.dataroot
    assert (tiny.data.train_split, tiny.data.val_split) == ("mini_train", "mini_val")
