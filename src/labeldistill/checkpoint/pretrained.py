"""Initialisation of the student's image backbone: ImageNet from the local torch hub cache, or
a weights file named by ``student.image_backbone.pretrained_path``.

The paper initialises its ResNet with torchvision's ``IMAGENET1K_V1`` weights. Training machines
may be offline, so nothing is downloaded here: the file must already be in
``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()``); otherwise a one-line
:class:`~labeldistill.errors.UserError` says where we looked, how to get the file and how to
train from random init instead. ``pretrained_path`` takes any torchvision-layout ResNet state
dict (an ImageNet file copied by hand, or the stage-0 backbone of ``labeldistill
pretrain-backbone``, ``backbone.safetensors``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision.models import (
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
)

from labeldistill.checkpoint.weights import compare_state, read_weights
from labeldistill.config import ImageBackboneConfig
from labeldistill.errors import UserError

log = logging.getLogger(__name__)

_WEIGHTS = {
    18: ResNet18_Weights.IMAGENET1K_V1,
    34: ResNet34_Weights.IMAGENET1K_V1,
    50: ResNet50_Weights.IMAGENET1K_V1,
    101: ResNet101_Weights.IMAGENET1K_V1,
}


def imagenet_weights_path(depth: int, hub_dir: str | Path | None = None) -> Path:
    """Where torchvision caches the ``IMAGENET1K_V1`` file of ResNet-``depth``."""
    if depth not in _WEIGHTS:
        raise UserError(
            f"image backbone depth {depth} has no ImageNet weights: use 18, 34, 50 or 101"
        )
    root = Path(hub_dir) if hub_dir is not None else Path(torch.hub.get_dir())
    return root / "checkpoints" / Path(_WEIGHTS[depth].url).name


def _load_resnet(backbone: nn.Module, path: Path, depth: int, what: str, fix: str) -> Path:
    """Copy the torchvision-layout ResNet-``depth`` state dict in ``path`` (``fc.*`` dropped)
    into ``backbone`` (strict); a file of another network is a UserError ending in ``fix``."""
    state = {k: v for k, v in read_weights(path).state_dict.items() if not k.startswith("fc.")}
    report = compare_state(backbone, state)
    if not report.ok:
        raise UserError(f"{what} {path} does not fit ResNet-{depth} ({report.summary()}): {fix}")
    backbone.load_state_dict(state, strict=True)
    log.info("image backbone initialised from %s", path)
    return path


def load_imagenet_backbone(
    backbone: nn.Module, depth: int, hub_dir: str | Path | None = None
) -> Path:
    """Copy torchvision ImageNet weights into ``backbone`` (a ``ResNetBackbone``); no download.

    ``fc.*`` entries are dropped; every other key must match (strict). Returns the file used.
    Raises :class:`UserError` when the file is not in the cache.
    """
    path = imagenet_weights_path(depth, hub_dir)
    url = _WEIGHTS[depth].url
    if not path.is_file():
        raise UserError(
            f"ImageNet weights for ResNet-{depth} not found at {path}: download {url} into "
            f"{path.parent} on a machine with internet (or set TORCH_HOME), or pass "
            "--set student.image_backbone.pretrained=false for random init"
        )
    return _load_resnet(
        backbone, path, depth, "ImageNet weights file", f"delete it and download {url} again"
    )


def load_backbone_file(backbone: nn.Module, path: str | Path, depth: int) -> Path:
    """Copy a torchvision-layout ResNet-``depth`` state dict (``.pth`` / ``.safetensors``;
    ``fc.*`` dropped) into ``backbone`` (strict). Raises :class:`UserError` naming the file
    when it is missing, unreadable or of another network."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"backbone weights {path} not found (student.image_backbone.pretrained_path): give "
            "an existing file, run `labeldistill pretrain-backbone`, or set "
            "student.image_backbone.pretrained=false for random init"
        )
    return _load_resnet(
        backbone,
        path,
        depth,
        "backbone weights",
        "give the weights of the same ResNet depth (student.image_backbone.depth)",
    )


def init_student_backbone(image_backbone: nn.Module, cfg: ImageBackboneConfig) -> Path | None:
    """Initialise a student's ``backbone.img_backbone`` when ``cfg.pretrained`` (paper
    default): from ``cfg.pretrained_path`` when set, else ImageNet from the hub cache. Random
    init (returns None) otherwise. The file used is returned."""
    if not cfg.pretrained:
        log.info("image backbone: random init (student.image_backbone.pretrained=false)")
        return None
    if cfg.pretrained_path:
        return load_backbone_file(image_backbone, cfg.pretrained_path, cfg.depth)
    return load_imagenet_backbone(image_backbone, cfg.depth)
