"""Reading weights (EMA preferred), strict loading with a one-line CheckpointError, teachers,
resume paths, and the dataset-order gather."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from labeldistill.config import ExperimentConfig, TrainerConfig
from labeldistill.errors import CheckpointError
from labeldistill.training.checkpoints import (
    compare_state,
    last_checkpoint,
    load_teacher,
    load_weights,
    read_weights,
    resolve_resume,
    save_safetensors,
)
from labeldistill.training.modules import STAGES, interleave


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def _state(value: float) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in _net().state_dict().items():
        out[k] = torch.full_like(v, value) if torch.is_floating_point(v) else v.clone()
    return out


def test_lightning_ckpt_prefers_ema(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    raw = {f"model.{k}": v for k, v in _state(1.0).items()}
    torch.save({"state_dict": raw, "ema_state_dict": _state(2.0), "epoch": 3}, path)
    w = read_weights(path)
    assert w.kind == "ema"
    assert float(w.state_dict["0.weight"][0, 0]) == 2.0
    w = read_weights(path, prefer_ema=False)
    assert w.kind == "raw"
    assert set(w.state_dict) == set(_net().state_dict())  # "model." stripped
    net = _net()
    load_weights(net, path)
    assert torch.all(net[0].weight == 2.0)


def test_original_pth_layout_and_safetensors(tmp_path: Path) -> None:
    pth = tmp_path / "29.pth"
    torch.save({"epoch": 29, "state_dict": {f"model.{k}": v for k, v in _state(5.0).items()}}, pth)
    net = _net()
    load_weights(net, pth)
    assert torch.all(net[1].running_mean == 5.0)
    st = tmp_path / "w.safetensors"
    save_safetensors(st, _state(7.0), metadata={"kind": "ema"})
    w = read_weights(st)
    assert w.kind == "ema"
    assert float(w.state_dict["1.bias"][0]) == 7.0


def test_mismatch_raises_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    state = _state(1.0)
    state["0.weight"] = torch.zeros(5, 3)  # wrong shape
    del state["1.bias"]  # missing
    state["extra"] = torch.zeros(1)  # unexpected
    save_safetensors(path, state, metadata={})
    report = compare_state(_net(), state)
    assert report.missing == ["1.bias"]
    assert report.unexpected == ["extra"]
    assert report.shape_mismatch == ["0.weight"]
    with pytest.raises(CheckpointError) as err:
        load_weights(_net(), path)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg and "1 missing" in msg and "1 unexpected" in msg
    assert "1 wrong shape" in msg


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        read_weights(junk)
    with pytest.raises(CheckpointError, match="not found"):
        read_weights(tmp_path / "nope.ckpt")


def test_teacher_loader_strips_prefix_and_freezes(tmp_path: Path) -> None:
    path = tmp_path / "teacher.pth"
    state = {f"model.centerpoint.{k}": v for k, v in _state(3.0).items()}
    state["model.head.unused"] = torch.zeros(2)  # other parts of the original stage-1 model
    torch.save({"state_dict": state}, path)
    teacher = _net().train()
    load_teacher(teacher, path, prefixes=("centerpoint.",))
    assert torch.all(teacher[0].weight == 3.0)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.training


def test_resume_resolution(tmp_path: Path) -> None:
    cfg = ExperimentConfig(name="exp", trainer=TrainerConfig(output_dir=str(tmp_path)))
    assert resolve_resume(cfg, None) is None
    with pytest.raises(CheckpointError, match="last.ckpt"):
        resolve_resume(cfg, "last")
    last = last_checkpoint(cfg)
    assert last == tmp_path / "exp" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"x")
    assert resolve_resume(cfg, "last") == last


def test_interleave_restores_dataset_order_and_drops_padding() -> None:
    # 5 items on 2 ranks: rank 0 gets 0, 2, 4; rank 1 gets 1, 3 and the padding item 0
    assert interleave([[0, 2, 4], [1, 3, 0]], 5) == [0, 1, 2, 3, 4]
    assert interleave([[0, 3], [1, 4], [2, 0]], 5) == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError):
        interleave([[0, 2], [1]], 3)


def test_stage_dispatch_table() -> None:
    assert set(STAGES) >= {"student", "lidar_teacher"}
    assert STAGES["student"].needs_depth and not STAGES["student"].needs_lidar
    assert STAGES["lidar_teacher"].needs_lidar and not STAGES["lidar_teacher"].needs_depth
