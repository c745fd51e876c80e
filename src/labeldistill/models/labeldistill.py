"""LabelDistill (METHOD.md 7-9): the camera student with two frozen teachers and two adaptors.

The teachers (LiDAR CenterPoint, label encoder) are frozen explicitly: ``requires_grad_(False)``,
run under ``torch.no_grad()``, and kept in eval mode whatever ``.train()`` calls happen (the
published code lets Lightning switch them to train mode, quirk 6; see docs/deviations.md).
At inference only the student runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from labeldistill.config import DistillConfig
from labeldistill.models.distill import (
    DistillAdaptor,
    feature_distill_loss,
    partition_channels,
    partition_slices,
    response_distill_loss,
)
from labeldistill.models.label_encoder import LabelEncoder
from labeldistill.structures import DistillOutput, LabelMaps, StudentOutput, Targets


def freeze(module: nn.Module) -> nn.Module:
    """No gradients, eval mode."""
    module.requires_grad_(False)
    module.eval()
    return module


class LabelDistill(nn.Module):
    """Student + adaptors + frozen teachers.

    student:          a BEVDepthStudent (``forward(imgs, ego_from_camera, intrinsics, ida, bda)
                      -> StudentOutput``, ``head.code_weights``/``head.cfg`` for the losses).
    student_channels: channels of the two student distillation levels (S0, S1).
    lidar_teacher:    a LidarTeacher (``forward(points) -> TeacherOutput``) or None.
    label_encoder:    a LabelEncoder or None.
    teacher_channels: channels of the teacher feature levels (128, 256 in the paper).
    """

    def __init__(
        self,
        student: nn.Module,
        cfg: DistillConfig,
        *,
        student_channels: Sequence[int],
        lidar_teacher: nn.Module | None = None,
        label_encoder: LabelEncoder | None = None,
        teacher_channels: Sequence[int] = (128, 256),
    ) -> None:
        super().__init__()
        if cfg.use_lidar_teacher and lidar_teacher is None:
            raise ValueError("distill.use_lidar_teacher is set but no LiDAR teacher was given")
        if cfg.use_label_teacher and label_encoder is None:
            raise ValueError("distill.use_label_teacher is set but no label encoder was given")
        self.cfg = cfg
        self.student = student
        in_channels = [partition_channels(c, cfg.partition) for c in student_channels]
        self.distill_encoder_lidar = (
            DistillAdaptor(in_channels, teacher_channels) if cfg.use_lidar_teacher else None
        )
        self.distill_encoder_label = (
            DistillAdaptor(in_channels, teacher_channels) if cfg.use_label_teacher else None
        )
        self.lidar_teacher = freeze(lidar_teacher) if cfg.use_lidar_teacher else None
        self.label_encoder = freeze(label_encoder) if cfg.use_label_teacher else None
        self._student_channels = tuple(student_channels)

    def teachers(self) -> list[nn.Module]:
        return [t for t in (self.lidar_teacher, self.label_encoder) if t is not None]

    def train(self, mode: bool = True) -> LabelDistill:
        super().train(mode)
        for t in self.teachers():
            t.eval()
        return self

    def forward(
        self, imgs: Tensor, ego_from_camera: Tensor, intrinsics: Tensor, ida: Tensor, bda: Tensor
    ) -> StudentOutput:
        """Inference: the student alone. Shapes as ``BEVDepthStudent.forward``."""
        return self.student(imgs, ego_from_camera, intrinsics, ida, bda)

    def forward_train(
        self,
        imgs: Tensor,
        ego_from_camera: Tensor,
        intrinsics: Tensor,
        ida: Tensor,
        bda: Tensor,
        *,
        lidar_points: Tensor | None = None,
        label_maps: LabelMaps | None = None,
    ) -> DistillOutput:
        """Student with distillation heads; teachers under no_grad.

        lidar_points [B, P, 5] (needed with the LiDAR teacher), label_maps (with the label one).
        """
        out = self.student(imgs, ego_from_camera, intrinsics, ida, bda)
        s0, s1 = out.distill_feats
        label_sl = [partition_slices(c, self.cfg.partition)[0] for c in self._student_channels]
        lidar_sl = [partition_slices(c, self.cfg.partition)[1] for c in self._student_channels]
        result = DistillOutput(student=out)
        if self.lidar_teacher is not None:
            if lidar_points is None:
                raise ValueError("the LiDAR teacher needs lidar_points")
            with torch.no_grad():
                result.lidar = self.lidar_teacher(lidar_points)
            assert self.distill_encoder_lidar is not None
            result.lidar_adapted = self.distill_encoder_lidar(
                (s0[:, lidar_sl[0]], s1[:, lidar_sl[1]])
            )
        if self.label_encoder is not None:
            if label_maps is None:
                raise ValueError("the label teacher needs label_maps")
            with torch.no_grad():
                result.label_feats = self.label_encoder(label_maps.box, label_maps.label)
            assert self.distill_encoder_label is not None
            result.label_adapted = self.distill_encoder_label(
                (s0[:, label_sl[0]], s1[:, label_sl[1]])
            )
        return result

    def distill_losses(
        self,
        out: DistillOutput,
        targets: Targets,
        code_weights: Sequence[float],
        bbox_weight: float = 0.25,
    ) -> dict[str, Tensor]:
        """Weighted distillation terms: lidar_feat, label_feat, response (METHOD.md 8.3-8.4)."""
        losses: dict[str, Tensor] = {}
        if out.lidar is not None and out.lidar_adapted is not None:
            losses["lidar_feat"] = self.cfg.lidar_feat_weight * feature_distill_loss(
                out.lidar.feats, out.lidar_adapted, targets, binary=False
            )
            losses["response"] = self.cfg.response_weight * response_distill_loss(
                out.student.head, out.lidar.head, targets, code_weights, bbox_weight
            )
        if out.label_feats is not None and out.label_adapted is not None:
            losses["label_feat"] = self.cfg.label_feat_weight * feature_distill_loss(
                out.label_feats, out.label_adapted, targets, binary=True
            )
        return losses
