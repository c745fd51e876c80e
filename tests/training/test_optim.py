"""Parameter groups by the ``backbone`` substring, lr scaling with the batch, MultiStepLR."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from labeldistill.config import OptimConfig, load_config
from labeldistill.models.build import build_student
from labeldistill.training.optim import (
    build_optimizer,
    build_scheduler,
    effective_lr,
    split_param_groups,
)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)
        self.pts_backbone_like = nn.Linear(2, 2)  # name contains "backbone" too
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_backbone_params_get_half_lr() -> None:
    cfg = OptimConfig(lr=4e-4, weight_decay=1e-2, backbone_lr_mult=0.5)
    opt = build_optimizer(Toy(), cfg, global_batch=16)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(2e-4)
    assert groups["other"]["lr"] == pytest.approx(4e-4)
    assert len(groups["backbone"]["params"]) == 4  # backbone.{weight,bias}, pts_backbone_like.*
    assert len(groups["other"]["params"]) == 2  # head.*; the frozen layer is left out
    assert all(g["weight_decay"] == pytest.approx(1e-2) for g in opt.param_groups)


def test_lr_scaled_with_global_batch() -> None:
    cfg = OptimConfig(lr=4e-4, reference_batch=16, scale_lr_with_batch=True)
    assert effective_lr(cfg, 32) == pytest.approx(8e-4)
    assert effective_lr(cfg, 4) == pytest.approx(1e-4)
    assert effective_lr(dataclasses.replace(cfg, scale_lr_with_batch=False), 4) == pytest.approx(
        4e-4
    )
    opt = build_optimizer(Toy(), cfg, global_batch=8)
    assert {g["name"]: g["lr"] for g in opt.param_groups} == pytest.approx(
        {"backbone": 1e-4, "other": 2e-4}
    )


def test_multistep_schedule_per_epoch() -> None:
    cfg = OptimConfig(lr=1.0, backbone_lr_mult=0.5, milestones=(2, 4), gamma=0.1)
    opt = build_optimizer(Toy(), cfg, global_batch=16)
    sched = build_scheduler(opt, cfg)
    seen = []
    for _ in range(5):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    expected = [[0.5, 1.0]] * 2 + [[0.05, 0.1]] * 2 + [[0.005, 0.01]]
    assert [x for row in seen for x in row] == pytest.approx([x for row in expected for x in row])


def test_student_groups_follow_module_names() -> None:
    """In the student, exactly the ``backbone.*`` module (image backbone, neck, DepthNet) is in
    the half-lr group; the BEV trunk/neck/head are not."""
    model = build_student(load_config("bevdepth_tiny"))
    groups = split_param_groups(model)
    assert groups.backbone and groups.other
    assert all(n.startswith("backbone.") for n in groups.backbone)
    assert all(n.startswith("head.") for n in groups.other)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(groups.backbone) + len(groups.other) == len(trainable)
    assert any(n.startswith("backbone.depth_net.") for n in groups.backbone)
    assert any(n.startswith("head.trunk.") for n in groups.other)
    torch.manual_seed(0)
