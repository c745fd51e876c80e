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
from labeldistill.models.common import freeze
from labeldistill.models.distill import (
    DistillAdaptor,
    feature_distill_loss,
    partition_channels,
    partition_slices,
    response_distill_loss,
)
from labeldistill.models.label_encoder import LabelEncoder
from labeldistill.models.lidar_teacher import LidarTeacher
from labeldistill.models.student import BEVDepthStudent
from labeldistill.structures import (
    Batch,
    Detections,
    DistillOutput,
    LabelMaps,
    StudentOutput,
    Targets,
)


class LabelDistill(nn.Module):
    """Student + adaptors + frozen teachers; owns the whole stage-3 loss (METHOD.md 8):

    L = det_weight * (L_heatmap + L_bbox) + depth_weight * L_depth
        + lidar_feat_weight * L_feat^lidar + label_feat_weight * L_feat^label
        + response_weight * L_resp

    with the weights of ``cfg`` (:meth:`loss`). :meth:`forward_batch` runs the student and the
    teachers on a batch, :meth:`detect` the student alone.

    student:          a BEVDepthStudent (``forward(imgs, ego_from_camera, intrinsics, ida, bda)
                      -> StudentOutput``, ``head.cfg`` for the losses).
    student_channels: channels of the two student distillation levels (S0, S1).
    lidar_teacher:    a LidarTeacher (``forward(points) -> TeacherOutput``) or None.
    label_encoder:    a LabelEncoder or None.
    teacher_channels: channels of the teacher feature levels (128, 256 in the paper).
    """

    def __init__(
        self,
        student: BEVDepthStudent,
        cfg: DistillConfig,
        *,
        student_channels: Sequence[int],
        lidar_teacher: LidarTeacher | None = None,
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
            s0_lidar = s0[:, lidar_sl[0]]
            if not self.cfg.lidar_level0_grad and self.cfg.partition == "thirds":
                s0_lidar = s0_lidar.detach()  # the 2key / 4key topology at any F (cfg doc)
            result.lidar_adapted = self.distill_encoder_lidar((s0_lidar, s1[:, lidar_sl[1]]))
        if self.label_encoder is not None:
            if label_maps is None:
                raise ValueError("the label teacher needs label_maps")
            with torch.no_grad():
                result.label_feats = self.label_encoder(label_maps.box, label_maps.label)
            assert self.distill_encoder_label is not None
            s0_label = s0[:, label_sl[0]]
            if not self.cfg.label_level0_grad and self.cfg.partition == "thirds":
                s0_label = s0_label.detach()  # an experiment, not a published layout (cfg doc)
            result.label_adapted = self.distill_encoder_label((s0_label, s1[:, label_sl[1]]))
        return result

    def forward_batch(self, batch: Batch) -> DistillOutput:
        """:meth:`forward_train` on a batch: its cameras, its points when the LiDAR teacher is
        on, the label maps of its GT (``max_objs`` of the student head) with the label one."""
        maps = None
        if self.label_encoder is not None:
            max_objs = self.student.head.cfg.max_objs
            maps = self.label_encoder.label_maps(batch.gt_boxes, batch.gt_labels, max_objs)
        if self.lidar_teacher is not None and batch.lidar_points is None:
            raise RuntimeError("the LiDAR teacher needs points: data.return_lidar must be true")
        return self.forward_train(
            batch.imgs,
            batch.ego_from_camera,
            batch.intrinsics,
            batch.ida,
            batch.bda,
            lidar_points=batch.lidar_points if self.lidar_teacher is not None else None,
            label_maps=maps,
        )

    def loss(self, out: DistillOutput, batch: Batch) -> dict[str, Tensor]:
        """Every weighted term of the stage-3 loss (class docstring): ``det_heatmap``,
        ``det_bbox``, ``depth``, then ``lidar_feat``, ``response`` (LiDAR teacher on) and
        ``label_feat`` (label teacher on). Their sum is the training loss."""
        if batch.depth is None:
            raise RuntimeError("the labeldistill stage needs depth maps: data.return_depth")
        d = self.cfg
        head = self.student.head
        targets = head.get_targets(batch.gt_boxes, batch.gt_labels)
        det = head.loss(out.student.head, targets)
        terms = {f"det_{k}": d.det_weight * v for k, v in det.items()}
        terms["depth"] = d.depth_weight * self.student.loss_depth(out.student, batch.depth)
        terms.update(
            self.distill_losses(
                out, targets, head.cfg.code_weights, bbox_weight=head.cfg.loss_bbox_weight
            )
        )
        return terms

    def detect(self, batch: Batch) -> list[Detections]:
        """Inference: the student alone (the baseline's path)."""
        return self.student.detect(batch)

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
