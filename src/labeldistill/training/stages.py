"""The training stages: ONE literal table ``cfg.stage`` -> :class:`Stage`.

A stage's network is built by :func:`labeldistill.models.build.build_stage_model` (its
``STAGE_BUILDERS``) and owns ``forward_batch`` / ``loss`` / ``detect``; what training adds per
stage is here: what the datamodule loads for it and the external weights a fresh run starts
from (ImageNet, frozen teachers; a resumed run restores everything from its ``.ckpt``).

Teachers come from the stage checkpoints named by ``distill.lidar_ckpt`` / ``distill.label_ckpt``
through :func:`~labeldistill.checkpoint.weights.load_teacher` (strict; missing / unexpected
keys are reported and fail). Checkpoint keys (decision, docs/training.md): the stage model is
saved whole, teachers included (``model.student.*``, ``model.distill_encoder_{lidar,label}.*``,
``model.lidar_teacher.*``, ``model.label_encoder.*``), as the original saves them, so evaluating
a LabelDistill checkpoint needs no teacher files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from labeldistill.checkpoint.pretrained import init_student_backbone
from labeldistill.checkpoint.weights import load_teacher
from labeldistill.config import ExperimentConfig
from labeldistill.errors import CheckpointError, ConfigError
from labeldistill.models.label_teacher import LabelTeacher
from labeldistill.models.labeldistill import LabelDistill
from labeldistill.models.student import BEVDepthStudent

#: Prefixes under which a LiDAR teacher's weights may sit in a checkpoint: the original's
#: stage-1 / stage-2 files (``centerpoint.``), our stage-2 file (``lidar_teacher.``); our
#: stage-1 file has the teacher's own keys (no prefix).
LIDAR_PREFIXES = ("centerpoint.", "lidar_teacher.")
LABEL_PREFIXES = ("label_encoder.",)
LIDAR_HINT = "train stage 1 first (labeldistill train centerpoint_tiny / the lidar_teacher config)"
LABEL_HINT = "train stage 2 first (labeldistill train labeldistill_step1_tiny / labeldistill_step1)"


def teacher_checkpoint(path: str | None, key: str, stage_hint: str) -> Path:
    """The existing checkpoint file of config key ``key``, or one-line CheckpointError."""
    if not path:
        raise CheckpointError(f"{key} is not set: {stage_hint}, then set {key}=PATH")
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{key} {p} not found: {stage_hint} (or set {key}=PATH)")
    return p


def _no_external_weights(cfg: ExperimentConfig, model: nn.Module) -> None:
    """The LiDAR teacher starts from random init."""


def _init_student(cfg: ExperimentConfig, student: BEVDepthStudent) -> None:
    """The student's image backbone: ImageNet / ``pretrained_path`` (the one ImageNet door)."""
    init_student_backbone(student.backbone.img_backbone, cfg.student.image_backbone)


def _init_student_stage(cfg: ExperimentConfig, model: nn.Module) -> None:
    assert isinstance(model, BEVDepthStudent)
    _init_student(cfg, model)


def _init_label_teacher(cfg: ExperimentConfig, model: nn.Module) -> None:
    """Stage 2: the frozen LiDAR teacher from ``distill.lidar_ckpt``."""
    assert isinstance(model, LabelTeacher)
    path = teacher_checkpoint(cfg.distill.lidar_ckpt, "distill.lidar_ckpt", LIDAR_HINT)
    load_teacher(model.lidar_teacher, path, prefixes=LIDAR_PREFIXES)


def _init_labeldistill(cfg: ExperimentConfig, model: nn.Module) -> None:
    """Stage 3: both teacher files are checked before any work (a missing one fails at once),
    then the student's ImageNet backbone and the frozen teachers are loaded."""
    assert isinstance(model, LabelDistill)
    d = cfg.distill
    lidar = (
        teacher_checkpoint(d.lidar_ckpt, "distill.lidar_ckpt", LIDAR_HINT)
        if d.use_lidar_teacher
        else None
    )
    label = (
        teacher_checkpoint(d.label_ckpt, "distill.label_ckpt", LABEL_HINT)
        if d.use_label_teacher
        else None
    )
    _init_student(cfg, model.student)
    if lidar is not None and model.lidar_teacher is not None:
        load_teacher(model.lidar_teacher, lidar, prefixes=LIDAR_PREFIXES)
    if label is not None and model.label_encoder is not None:
        load_teacher(model.label_encoder, label, prefixes=LABEL_PREFIXES)
    model.train(model.training)  # teachers back to eval whatever happened


@dataclass(frozen=True)
class Stage:
    """What training does for one stage.

    needs_lidar:       multi-sweep LiDAR points in training.
    lidar_with_teacher: points only when ``distill.use_lidar_teacher`` (LabelDistill ablations).
    needs_depth:       LiDAR depth maps for the depth loss.
    needs_images:      decoded camera images in training.
    eval_needs_lidar:  points at evaluation / prediction (None: as in training).
    init_weights:      external initial weights of a fresh run, ``(cfg, stage model)``.
    """

    needs_lidar: bool
    needs_depth: bool
    needs_images: bool = True
    eval_needs_lidar: bool | None = None
    lidar_with_teacher: bool = False
    init_weights: Callable[[ExperimentConfig, nn.Module], None] = _no_external_weights

    def train_needs_lidar(self, cfg: ExperimentConfig) -> bool:
        """Whether the training loader of ``cfg`` reads points."""
        if self.lidar_with_teacher:
            return self.needs_lidar and cfg.distill.use_lidar_teacher
        return self.needs_lidar


#: ``cfg.stage`` -> its :class:`Stage` (keys = ``models.build.STAGE_BUILDERS``).
STAGES: dict[str, Stage] = {
    # BEVDepth camera student / the paper's baseline
    "student": Stage(needs_lidar=False, needs_depth=True, init_weights=_init_student_stage),
    # stage 1, CenterPoint: points only (the original decodes F x 6 images it never uses)
    "lidar_teacher": Stage(needs_lidar=True, needs_depth=False, needs_images=False),
    # stage 2: label maps from the GT only
    "label_encoder": Stage(
        needs_lidar=False, needs_depth=False, needs_images=False, init_weights=_init_label_teacher
    ),
    # stage 3: the student alone is evaluated, so no scan is opened then
    "labeldistill": Stage(
        needs_lidar=True,
        needs_depth=True,
        eval_needs_lidar=False,
        lidar_with_teacher=True,
        init_weights=_init_labeldistill,
    ),
}


def stage_of(cfg: ExperimentConfig) -> Stage:
    """The :class:`Stage` of ``cfg.stage``; ConfigError for an unknown one."""
    try:
        return STAGES[cfg.stage]
    except KeyError:
        raise ConfigError(
            f"stage '{cfg.stage}' has no training module yet (available: {', '.join(STAGES)})"
        ) from None
