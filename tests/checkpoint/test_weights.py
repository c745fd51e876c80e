"""Reading weights (EMA preferred), strict loading with a one-line CheckpointError, teachers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from labeldistill.checkpoint.weights import (
    compare_state,
    load_teacher,
    load_weights,
    read_weights,
    save_safetensors,
)
from labeldistill.errors import CheckpointError


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
