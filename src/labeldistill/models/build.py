"""Builders: one plain constructor call per model, from the experiment config.

Numbers that follow from several config sections (the number of key frames F =
``cfg.num_frames`` from ``data.key_idxes``, the network input size from ``data.image_size``,
the BEV trunk input channels F * C) are derived here or in the constructors they are handed
to, never stored twice in a config. ``build_label_encoder`` / ``build_label_teacher`` /
``build_labeldistill`` build the LabelDistill stages. :data:`STAGE_BUILDERS` maps
``cfg.stage`` to the builder of its stage model; :func:`build_stage_model` is the one door.

Every stage model has ``forward_batch(batch)``, ``loss(output, batch) -> dict[str, Tensor]``
(weighted with the config's ``distill`` weights) and ``detect(batch) -> list[Detections]``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from labeldistill.config import ExperimentConfig
from labeldistill.errors import ConfigError
from labeldistill.models.label_encoder import LabelEncoder
from labeldistill.models.label_teacher import LabelTeacher
from labeldistill.models.labeldistill import LabelDistill
from labeldistill.models.lidar_teacher import LidarTeacher
from labeldistill.models.student import BEVDepthStudent


def bev_trunk_in_channels(cfg: ExperimentConfig) -> int:
    """Channels of the student's BEV input: F * C (450 for 2key, 750 for 4key)."""
    return cfg.num_frames * cfg.student.view_transform.context_channels


def build_student(cfg: ExperimentConfig, *, exportable: bool = False) -> BEVDepthStudent:
    """The BEVDepth camera student (random init; ImageNet weights are loaded by training);
    ``exportable``: with the standard-ONNX ops (the ONNX export)."""
    return BEVDepthStudent(
        cfg.student,
        cfg.grid,
        num_frames=cfg.num_frames,
        image_size=(cfg.data.image_size[0], cfg.data.image_size[1]),
        img_mean=cfg.data.img_mean,
        img_std=cfg.data.img_std,
        weights=cfg.distill,
        exportable=exportable,
    )


def build_lidar_teacher(cfg: ExperimentConfig) -> LidarTeacher:
    """The CenterPoint LiDAR teacher on the experiment's BEV grid."""
    return LidarTeacher(cfg.lidar_teacher, cfg.grid, weights=cfg.distill)


# -- LabelDistill stages (label encoder, distilled student) -----------------------------------


def teacher_channels(cfg: ExperimentConfig) -> tuple[int, int]:
    """Channels of the two teacher feature levels (the LiDAR SECOND outputs, which the label
    encoder must reproduce): ``lidar_teacher.second_out_channels``. A label encoder with other
    output channels is a config error."""
    lidar = tuple(cfg.lidar_teacher.second_out_channels)
    label = tuple(cfg.label_encoder.out_channels)
    if len(lidar) != 2 or lidar != label:
        raise ConfigError(
            f"label_encoder.out_channels {list(label)} must equal "
            f"lidar_teacher.second_out_channels {list(lidar)} (two levels): set the same values"
        )
    if tuple(cfg.label_encoder.strides) != (1, 2):
        raise ConfigError(
            f"label_encoder.strides {list(cfg.label_encoder.strides)} must be [1, 2] to match "
            "the two SECOND levels"
        )
    return lidar[0], lidar[1]


def student_distill_channels(cfg: ExperimentConfig) -> tuple[int, int]:
    """Channels of the student's two distillation levels: S0 = BEV input F * C, S1 = trunk
    layer 1 = ``bev_encoder.base_channels`` (450 / 300 for 2key, 750 / 300 for 4key)."""
    return bev_trunk_in_channels(cfg), cfg.student.bev_encoder.base_channels


def build_label_encoder(cfg: ExperimentConfig) -> LabelEncoder:
    """The label encoder (METHOD.md 6.2) on the experiment's BEV grid."""
    teacher_channels(cfg)
    return LabelEncoder(cfg.label_encoder, cfg.grid)


def build_label_teacher(cfg: ExperimentConfig) -> LabelTeacher:
    """Stage 2 (METHOD.md 6.3): a label encoder decoded by a (frozen, randomly initialised until
    the stage-1 weights are loaded) LiDAR teacher."""
    return LabelTeacher(build_label_encoder(cfg), build_lidar_teacher(cfg), weights=cfg.distill)


def build_labeldistill(cfg: ExperimentConfig) -> LabelDistill:
    """Stage 3 (METHOD.md 7-9): the student with adaptors and the teachers that
    ``cfg.distill`` switches on (frozen; their trained weights are loaded by training)."""
    d = cfg.distill
    if not (d.use_lidar_teacher or d.use_label_teacher):
        raise ConfigError(
            "distill.use_lidar_teacher and distill.use_label_teacher are both false: "
            "train the student stage (stage: student) instead"
        )
    return LabelDistill(
        build_student(cfg),
        d,
        student_channels=student_distill_channels(cfg),
        lidar_teacher=build_lidar_teacher(cfg) if d.use_lidar_teacher else None,
        label_encoder=build_label_encoder(cfg) if d.use_label_teacher else None,
        teacher_channels=teacher_channels(cfg),
    )


#: ``cfg.stage`` -> the builder of its stage model (the network a training run holds).
STAGE_BUILDERS: dict[str, Callable[[ExperimentConfig], nn.Module]] = {
    "student": build_student,
    "lidar_teacher": build_lidar_teacher,
    "label_encoder": build_label_teacher,
    "labeldistill": build_labeldistill,
}


def build_stage_model(cfg: ExperimentConfig) -> nn.Module:
    """The stage model of ``cfg.stage`` (:data:`STAGE_BUILDERS`); ConfigError for an unknown
    stage."""
    try:
        builder = STAGE_BUILDERS[cfg.stage]
    except KeyError:
        raise ConfigError(
            f"stage '{cfg.stage}' has no model builder (available: {', '.join(STAGE_BUILDERS)})"
        ) from None
    return builder(cfg)
