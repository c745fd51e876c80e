"""Shipped configs: every file loads into the typed config and the tiny ones build their stage's
model; unknown keys fail, overrides, name vs path, paper values."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from labeldistill.config import ExperimentConfig, load_config, shipped_configs
from labeldistill.errors import ConfigError
from labeldistill.models.build import STAGE_BUILDERS, bev_trunk_in_channels, build_student

CONFIG_DIR = Path(str(resources.files("labeldistill") / "configs"))
#: Every shipped experiment file (``_base*.yaml`` are fragments, not experiments).
CONFIG_FILES = sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("_"))

EXPECTED = {
    "bevdepth_r50_256x704_128x128_e24_2key",
    "bevdepth_r50_256x704_128x128_e24_2key_base_exp",
    "bevdepth_tiny",
    "centerpoint_tiny",
    "centerpoint_vox01_128x128_20e_10sweeps",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_shipped_config_loads(name: str) -> None:
    assert set(shipped_configs()) >= EXPECTED
    cfg = load_config(name)
    assert cfg.name == name


def test_the_config_list_is_every_file() -> None:
    assert len(CONFIG_FILES) >= 18
    assert shipped_configs() == [p.stem for p in CONFIG_FILES]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_shipped_config_parses_and_builds(path: Path) -> None:
    cfg = load_config(path.stem)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == path.stem
    assert load_config(str(path)) == cfg  # the file path gives the same typed config
    assert cfg.stage in STAGE_BUILDERS
    if "tiny" in path.stem:  # the paper-size (R50 / R101) configs: parse-level checks only
        model = STAGE_BUILDERS[cfg.stage](cfg)
        assert sum(p.numel() for p in model.parameters()) > 0


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
    assert cfg.num_frames == 1
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
    assert cfg.data.key_idxes == (-2, -4) and cfg.num_frames == 3
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


def test_bevdepth_base_exp_recipe() -> None:
    # BEVDepth's own base_exp recipe next to our baseline (issue 11 item 6; METHOD.md 9.3).
    from labeldistill.training.optim import build_optimizer, effective_lr

    cfg = load_config("bevdepth_r50_256x704_128x128_e24_2key_base_exp")
    base = load_config("bevdepth_r50_256x704_128x128_e24_2key")
    assert cfg.stage == "student" and cfg.data.key_idxes == base.data.key_idxes
    assert cfg.student.view_transform.context_channels == 80
    assert bev_trunk_in_channels(cfg) == 240 and cfg.student.bev_encoder.base_channels == 160
    assert cfg.data.train_history_fallback == "current" == cfg.data.eval_history_fallback
    assert base.data.train_history_fallback == "last_valid"
    assert cfg.optim.weight_decay == 1e-7 and cfg.optim.backbone_lr_mult == 1.0
    assert effective_lr(cfg.optim, 16) == pytest.approx(2e-4 / 64 * 16)
    assert effective_lr(cfg.optim, 64) == pytest.approx(2e-4)
    assert effective_lr(base.optim, 16) == 4e-4
    assert not cfg.trainer.ema and base.trainer.ema
    assert cfg.student.head.code_weights == (1.0,) * 8 + (0.5, 0.5)
    assert cfg.student.view_transform.geometry_precision == "fp16_faithful"
    model = build_student(cfg)
    assert tuple(model.head.trunk.conv1.weight.shape) == (160, 240, 7, 7)
    opt = build_optimizer(model, cfg.optim, 16)
    assert all(g["lr"] == pytest.approx(5e-5) for g in opt.param_groups)
    assert {g["weight_decay"] for g in opt.param_groups} == {1e-7}
