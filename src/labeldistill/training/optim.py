"""Optimiser and learning-rate schedule shared by every stage (METHOD.md 9.3).

AdamW with two parameter groups: every trainable parameter whose full name contains the
substring ``backbone`` gets ``lr * backbone_lr_mult`` (the original's mmcv ``custom_keys``),
every other one ``lr``; weight decay on all parameters (norms and biases included, as the
original). MultiStepLR stepped once per epoch.

Learning rate and global batch: the published learning rates were tuned for 16 samples per
optimiser step (4 GPUs x 4). :func:`effective_lr` scales linearly with the global batch when
``optim.scale_lr_with_batch`` is set (see docs/training.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from labeldistill.config import OptimConfig

log = logging.getLogger(__name__)

BACKBONE_KEY = "backbone"


@dataclass
class ParamGroups:
    """Names of the trainable parameters in the backbone group and in the default group."""

    backbone: list[str]
    other: list[str]


def split_param_groups(model: nn.Module) -> ParamGroups:
    """Trainable parameter names, split by the ``backbone`` substring of their full name."""
    backbone: list[str] = []
    other: list[str] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (backbone if BACKBONE_KEY in name else other).append(name)
    return ParamGroups(backbone=backbone, other=other)


def effective_lr(cfg: OptimConfig, global_batch: int) -> float:
    """``cfg.lr``, or ``cfg.lr * global_batch / cfg.reference_batch`` with scale_lr_with_batch."""
    if not cfg.scale_lr_with_batch:
        return cfg.lr
    return cfg.lr * global_batch / cfg.reference_batch


def build_optimizer(model: nn.Module, cfg: OptimConfig, global_batch: int) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` in two groups (backbone, other).

    Each group records its ``lr_mult`` so that schedules and logs can recover it.
    """
    lr = effective_lr(cfg, global_batch)
    if cfg.scale_lr_with_batch:
        log.info(
            "lr scaled with the global batch: %g * %d / %d = %g",
            cfg.lr,
            global_batch,
            cfg.reference_batch,
            lr,
        )
    params = dict(model.named_parameters())
    groups_by_name = split_param_groups(model)
    groups = []
    for names, mult, tag in (
        (groups_by_name.backbone, cfg.backbone_lr_mult, "backbone"),
        (groups_by_name.other, 1.0, "other"),
    ):
        if names:
            groups.append(
                {
                    "params": [params[n] for n in names],
                    "lr": lr * mult,
                    "lr_mult": mult,
                    "name": tag,
                    "weight_decay": cfg.weight_decay,
                }
            )
    if not groups:
        raise ValueError("model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig
) -> torch.optim.lr_scheduler.MultiStepLR:
    """MultiStepLR over epochs (milestones and gamma from the config)."""
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma
    )
