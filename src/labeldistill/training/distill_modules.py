"""The LabelDistill training stages (METHOD.md 6.3, 7-9): the label encoder and the distilled
student, as :class:`~labeldistill.training.modules.StageModule` subclasses.

* :class:`LabelEncoderModule` (``stage: label_encoder``): GT -> label maps (rasterised in every
  step from the bda-augmented boxes) -> label encoder -> frozen LiDAR teacher neck + head ->
  the teacher head's own targets and loss (code_weights [1 x 8, 0.5, 0.5]). Only the label
  encoder is in the optimiser. Inference decodes the GT of the evaluated split through the
  frozen teacher: the label-encoder "upper bound".
* :class:`LabelDistillModule` (``stage: labeldistill``): L = det + depth_weight * depth +
  lidar_feat_weight * L_feat^lidar + label_feat_weight * L_feat^label +
  response_weight * L_resp, every term logged. Inference is the student alone (the same path
  as the baseline).

Teachers come from the stage checkpoints named by ``distill.lidar_ckpt`` / ``distill.label_ckpt``
through :func:`~labeldistill.training.checkpoints.load_teacher` (strict; missing / unexpected
keys are reported and fail). They are loaded only for a fresh training run.

Checkpoint keys (decision, docs/training.md): the stage model is saved whole, teachers included
(``model.student.*``, ``model.distill_encoder_{lidar,label}.*``, ``model.lidar_teacher.*``,
``model.label_encoder.*``), as the original saves them. Evaluating or predicting a LabelDistill
checkpoint therefore needs no teacher files: the strict load restores the frozen teachers
together with the student.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from labeldistill.config import ExperimentConfig
from labeldistill.errors import CheckpointError
from labeldistill.models import build
from labeldistill.models.label_encoder import rasterize_labels
from labeldistill.structures import Batch, Detections, LabelMaps, LossDict
from labeldistill.training.checkpoints import load_teacher
from labeldistill.training.modules import StageModule

log = logging.getLogger(__name__)

#: Prefixes under which a LiDAR teacher's weights may sit in a checkpoint: the original's
#: stage-1 / stage-2 files (``centerpoint.``), our stage-2 file (``lidar_teacher.``); our
#: stage-1 file has the teacher's own keys (no prefix).
LIDAR_PREFIXES = ("centerpoint.", "lidar_teacher.")
LABEL_PREFIXES = ("label_encoder.",)


def teacher_checkpoint(path: str | None, key: str, stage_hint: str) -> Path:
    """The existing checkpoint file of config key ``key``, or one-line CheckpointError."""
    if not path:
        raise CheckpointError(f"{key} is not set: {stage_hint}, then set {key}=PATH")
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{key} {p} not found: {stage_hint} (or set {key}=PATH)")
    return p


LIDAR_HINT = "train stage 1 first (labeldistill train centerpoint_tiny / the lidar_teacher config)"
LABEL_HINT = "train stage 2 first (labeldistill train labeldistill_step1_tiny / labeldistill_step1)"


def label_maps(cfg: ExperimentConfig, batch: Batch, max_objs: int) -> LabelMaps:
    """Label-encoder inputs from the batch's (bda-augmented) GT: box [B, Y, X, 9],
    label [B, Y, X, 10], mask [B, Y, X]."""
    return rasterize_labels(
        batch.gt_boxes, batch.gt_labels, cfg.grid, cfg.label_encoder.rasterize, max_objs
    )


class LabelEncoderModule(StageModule):
    """Stage 2 (METHOD.md 6.3): ``self.model`` is a LabelTeacher (label_encoder + frozen
    lidar_teacher); loss = the teacher head's detection loss on GT targets."""

    needs_lidar = False
    needs_depth = False
    needs_images = False  # label maps from the GT only

    @staticmethod
    def build_model(cfg: ExperimentConfig) -> nn.Module:
        return build.build_label_teacher(cfg)

    def init_weights_for_training(self) -> None:
        path = teacher_checkpoint(self.cfg.distill.lidar_ckpt, "distill.lidar_ckpt", LIDAR_HINT)
        load_teacher(self.model.lidar_teacher, path, prefixes=LIDAR_PREFIXES)

    @property
    def teacher_head(self) -> nn.Module:
        return self.model.lidar_teacher.pts_bbox_head

    def compute_losses(self, batch: Batch) -> LossDict:
        head = self.teacher_head
        out = self.model(label_maps(self.cfg, batch, head.cfg.max_objs))
        det = head.loss(out.head, head.get_targets(batch.gt_boxes, batch.gt_labels))
        return LossDict({f"det_{k}": self.cfg.distill.det_weight * v for k, v in det.items()})

    def detect(self, batch: Batch) -> list[Detections]:
        head = self.teacher_head
        out = self.model(label_maps(self.cfg, batch, head.cfg.max_objs))
        return head.decode(out.head)


class LabelDistillModule(StageModule):
    """Stage 3 (METHOD.md 7-9): ``self.model`` is a LabelDistill (student + adaptors + frozen
    teachers). The LiDAR points are read only when the LiDAR teacher is on."""

    needs_lidar = True
    needs_depth = True
    eval_needs_lidar = False  # the student alone is evaluated: no scan is opened

    def __init__(self, cfg: ExperimentConfig, global_batch: int = 1) -> None:
        super().__init__(cfg, global_batch)
        self.needs_lidar = cfg.distill.use_lidar_teacher

    @staticmethod
    def build_model(cfg: ExperimentConfig) -> nn.Module:
        return build.build_labeldistill(cfg)

    def init_weights_for_training(self) -> None:
        d = self.cfg.distill
        # Check both files before any work, so that a missing one fails at once.
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
        from labeldistill.training.pretrained import init_student_backbone

        init_student_backbone(
            self.model.student.backbone.img_backbone, self.cfg.student.image_backbone
        )
        if lidar is not None:
            load_teacher(self.model.lidar_teacher, lidar, prefixes=LIDAR_PREFIXES)
        if label is not None:
            load_teacher(self.model.label_encoder, label, prefixes=LABEL_PREFIXES)
        self.model.train(self.model.training)  # teachers back to eval whatever happened

    def compute_losses(self, batch: Batch) -> LossDict:
        model = self.model
        d = self.cfg.distill
        head = model.student.head
        if batch.depth is None:
            raise RuntimeError("the labeldistill stage needs depth maps: data.return_depth")
        targets = head.get_targets(batch.gt_boxes, batch.gt_labels)
        maps = label_maps(self.cfg, batch, head.cfg.max_objs) if d.use_label_teacher else None
        if d.use_lidar_teacher and batch.lidar_points is None:
            raise RuntimeError("the LiDAR teacher needs points: data.return_lidar must be true")
        out = model.forward_train(
            batch.imgs,
            batch.ego_from_camera,
            batch.intrinsics,
            batch.ida,
            batch.bda,
            lidar_points=batch.lidar_points if d.use_lidar_teacher else None,
            label_maps=maps,
        )
        det = head.loss(out.student.head, targets)
        terms = {f"det_{k}": d.det_weight * v for k, v in det.items()}
        terms["depth"] = d.depth_weight * model.student.loss_depth(out.student, batch.depth)
        terms.update(
            model.distill_losses(
                out, targets, head.cfg.code_weights, bbox_weight=head.cfg.loss_bbox_weight
            )
        )
        return LossDict(terms)

    def detect(self, batch: Batch) -> list[Detections]:
        student = self.model.student
        out = student(batch.imgs, batch.ego_from_camera, batch.intrinsics, batch.ida, batch.bda)
        return student.decode(out)
