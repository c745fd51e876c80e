"""One thin LightningModule per training stage, picked by ``cfg.stage`` from :data:`STAGES`.

A stage module owns its network as ``self.model`` (so checkpoint keys are ``model.<...>``, as
the original's, METHOD.md 12) and defines three things:

* ``build_model(cfg)``: a call into :mod:`labeldistill.models.build`;
* ``compute_losses(batch) -> LossDict``: forward + the weighted loss terms (weights from the
  config); ``training_step`` logs every term and returns their sum;
* ``detect(batch) -> list[Detections]``: inference, used by validation, test and predict,
  which collect ``(Detections, SampleMeta)`` records and gather them across ranks in dataset
  order (:func:`gather_records`).

Adding a stage (label encoder, LabelDistill) = one subclass + one entry in :data:`STAGES`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor, nn

from labeldistill.config import ExperimentConfig
from labeldistill.io import atomic_write_text
from labeldistill.models import build
from labeldistill.structures import Batch, Detections, LossDict, SampleMeta
from labeldistill.training.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


@dataclass
class Record:
    """The decoded detections of one sample (CPU tensors) and its meta."""

    dets: Detections
    meta: SampleMeta


def gather_records(records: list[Record], dataset_len: int) -> list[Record]:
    """All ranks' records in dataset order, without the DistributedSampler padding.

    The eval sampler (``shuffle=False``) hands rank r the indices r, r + W, r + 2W, ... of the
    dataset padded to a multiple of W; interleaving the per-rank lists restores the order and
    truncating to ``dataset_len`` drops the padding (METHOD.md 10). Every rank gets the result.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return records[:dataset_len]
    world = torch.distributed.get_world_size()
    if world == 1:
        return records[:dataset_len]
    per_rank: list[Any] = [None] * world
    torch.distributed.all_gather_object(per_rank, records)
    return interleave(per_rank, dataset_len)


def interleave(per_rank: list[list[Any]], dataset_len: int) -> list[Any]:
    """Round-robin merge of equal-length per-rank lists, truncated to ``dataset_len``:
    rank r's i-th item is dataset item ``i * W + r`` (DistributedSampler, no shuffle)."""
    lengths = {len(r) for r in per_rank}
    if len(lengths) > 1:
        raise RuntimeError(f"ranks returned different numbers of records: {sorted(lengths)}")
    ordered = [rec for group in zip(*per_rank) for rec in group]
    return ordered[:dataset_len]


class StageModule(L.LightningModule):
    """Shared training / inference logic of every stage (see the module docstring).

    Class attributes tell the datamodule what the stage reads: ``needs_lidar`` (multi-sweep
    points), ``needs_depth`` (LiDAR depth maps for the depth loss), ``needs_images`` (camera
    images) in training, ``eval_needs_lidar`` (points at evaluation, default ``needs_lidar``).
    """

    needs_lidar: ClassVar[bool] = False
    needs_depth: ClassVar[bool] = False
    #: camera images in training (False: the items carry no decoded image)
    needs_images: ClassVar[bool] = True
    #: LiDAR points at evaluation / prediction (None: as ``needs_lidar``)
    eval_needs_lidar: ClassVar[bool | None] = None

    def __init__(self, cfg: ExperimentConfig, global_batch: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        self.global_batch = global_batch
        self.model = self.build_model(cfg)
        self._records: list[Record] = []
        self.gathered: list[Record] = []
        self.eval_dataset_len: int | None = None

    # -- to be defined by every stage -------------------------------------------------------

    @staticmethod
    def build_model(cfg: ExperimentConfig) -> nn.Module:
        raise NotImplementedError

    def compute_losses(self, batch: Batch) -> LossDict:
        raise NotImplementedError

    def detect(self, batch: Batch) -> list[Detections]:
        raise NotImplementedError

    def init_weights_for_training(self) -> None:
        """Load external initial weights (ImageNet, teachers) before a fresh training run."""

    # -- Lightning hooks ---------------------------------------------------------------------

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        if isinstance(batch, Batch):
            # Asynchronous from pinned memory (the loader pins with CUDA); a plain copy otherwise.
            return batch.to(device, non_blocking=True)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        losses = self.compute_losses(batch)
        total = losses.total
        bs = batch.batch_size
        for name, value in losses.terms.items():
            self.log(f"train/{name}", value.detach(), batch_size=bs, sync_dist=False)
        self.log("train/loss", total.detach(), batch_size=bs, prog_bar=True)
        return total

    def on_train_epoch_start(self) -> None:
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.model, self.cfg.optim, self.global_batch)
        scheduler = build_scheduler(optimizer, self.cfg.optim)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "frequency": 1},
        }

    # -- inference: validation / test / predict share one path ---------------------------------

    def _start_inference(self) -> None:
        self._records = []
        self.gathered = []

    def _infer(self, batch: Batch) -> None:
        dets = self.detect(batch)
        for det, meta in zip(dets, batch.metas, strict=True):
            self._records.append(Record(det.to("cpu"), meta))

    def _finish_inference(self) -> None:
        n = self.eval_dataset_len if self.eval_dataset_len is not None else len(self._records)
        self.gathered = gather_records(self._records, n)
        self._records = []

    def on_validation_epoch_start(self) -> None:
        self._start_inference()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._infer(batch)

    def on_validation_epoch_end(self) -> None:
        self._finish_inference()
        if self.trainer.is_global_zero and self.gathered:
            from labeldistill.training.checkpoints import run_dir
            from labeldistill.training.run import evaluate_records

            out = run_dir(self.cfg) / "eval" / f"val_epoch_{self.current_epoch}"
            metrics = evaluate_records(self.cfg, self.gathered, self.cfg.data.val_split, out)
            # the learning curves of benchmarks/accuracy.py plot val metrics against steps
            metrics["global_step"] = int(self.global_step)
            atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
            for key in ("mAP", "NDS"):
                self.log(f"val/{key}", float(metrics[key]), rank_zero_only=True)

    def on_test_epoch_start(self) -> None:
        self._start_inference()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._infer(batch)

    def on_test_epoch_end(self) -> None:
        self._finish_inference()

    def on_predict_epoch_start(self) -> None:
        self._start_inference()

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> list[Record]:
        """Collects the batch's records (gathered at epoch end) and returns them too."""
        n = len(self._records)
        self._infer(batch)
        return self._records[n:]

    def on_predict_epoch_end(self) -> None:
        self._finish_inference()


class StudentModule(StageModule):
    """BEVDepth camera student / the paper's baseline: L = det + depth_weight * depth."""

    needs_depth = True

    @staticmethod
    def build_model(cfg: ExperimentConfig) -> nn.Module:
        return build.build_student(cfg)

    def init_weights_for_training(self) -> None:
        from labeldistill.training.pretrained import init_student_backbone

        init_student_backbone(self.model.backbone.img_backbone, self.cfg.student.image_backbone)

    def compute_losses(self, batch: Batch) -> LossDict:
        model = self.model
        out = model(batch.imgs, batch.ego_from_camera, batch.intrinsics, batch.ida, batch.bda)
        weights = self.cfg.distill
        det = model.loss_detection(out, batch.gt_boxes, batch.gt_labels)
        terms = {f"det_{k}": weights.det_weight * v for k, v in det.items()}
        if batch.depth is None:
            raise RuntimeError("the student stage needs depth maps: data.return_depth must be true")
        terms["depth"] = weights.depth_weight * model.loss_depth(out, batch.depth)
        return LossDict(terms)

    def detect(self, batch: Batch) -> list[Detections]:
        out = self.model(batch.imgs, batch.ego_from_camera, batch.intrinsics, batch.ida, batch.bda)
        return self.model.decode(out)


class LidarTeacherModule(StageModule):
    """Stage 1, the CenterPoint LiDAR teacher: L = CenterPoint detection loss (METHOD.md 5.1)."""

    needs_lidar = True
    needs_images = False  # the teacher reads points only (the original decodes F x 6 images)

    @staticmethod
    def build_model(cfg: ExperimentConfig) -> nn.Module:
        return build.build_lidar_teacher(cfg)

    def _points(self, batch: Batch) -> Tensor:
        if batch.lidar_points is None:
            raise RuntimeError(
                "the lidar_teacher stage needs points: data.return_lidar must be true"
            )
        return batch.lidar_points

    def compute_losses(self, batch: Batch) -> LossDict:
        head = self.model.pts_bbox_head
        out = self.model(self._points(batch))
        det = head.loss(out.head, head.get_targets(batch.gt_boxes, batch.gt_labels))
        return LossDict({f"det_{k}": self.cfg.distill.det_weight * v for k, v in det.items()})

    def detect(self, batch: Batch) -> list[Detections]:
        out = self.model(self._points(batch))
        return self.model.pts_bbox_head.decode(out.head)


#: cfg.stage -> its LightningModule. The label encoder and LabelDistill stages add one entry each.
STAGES: dict[str, type[StageModule]] = {
    "student": StudentModule,
    "lidar_teacher": LidarTeacherModule,
}

# The LabelDistill stages subclass StageModule, so they are imported after it is defined (the
# package __init__ imports this module first, so distill_modules is never imported before it).
from labeldistill.training.distill_modules import (  # noqa: E402
    LabelDistillModule,
    LabelEncoderModule,
)

STAGES["label_encoder"] = LabelEncoderModule
STAGES["labeldistill"] = LabelDistillModule


def stage_module_class(cfg: ExperimentConfig) -> type[StageModule]:
    from labeldistill.errors import ConfigError

    try:
        return STAGES[cfg.stage]
    except KeyError:
        raise ConfigError(
            f"stage '{cfg.stage}' has no training module yet (available: {', '.join(STAGES)})"
        ) from None
