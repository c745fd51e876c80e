"""The one LightningModule of every training stage, driven by its stage model.

``self.model`` is the stage model of :func:`~labeldistill.models.build.build_stage_model` (so
checkpoint keys are ``model.<...>``, as the original's, METHOD.md 12), which owns the method:

* ``forward_batch(batch)`` and ``loss(output, batch) -> dict[str, Tensor]`` (the weighted
  terms; their weights come from the config): ``training_step`` logs every term and returns
  their sum;
* ``detect(batch) -> list[Detections]``: used by validation, test and predict, which collect
  ``(Detections, SampleMeta)`` records and gather them across ranks in dataset order
  (:func:`gather_records`).

What training adds per stage (data needs, initial weights) is :data:`~labeldistill.training.
stages.STAGES`. Adding a stage = one builder in ``models/build.py`` + one entry in each table.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from labeldistill.config import ExperimentConfig
from labeldistill.evaluation.nuscenes_eval import evaluate_detections
from labeldistill.io import atomic_write_text
from labeldistill.models.build import build_stage_model
from labeldistill.models.common import to_channels_last
from labeldistill.structures import Batch, Detections, LossDict, SampleMeta
from labeldistill.training.optim import build_optimizer, build_scheduler
from labeldistill.training.run_dir import RunDir
from labeldistill.training.stages import stage_of

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


def evaluate_records(
    cfg: ExperimentConfig, records: list[Record], split: str, out_dir: str | Path
) -> dict[str, Any]:
    """Official nuScenes metrics of ``records`` on ``split`` (results_nusc.json, metrics.json
    and the devkit's files in ``out_dir``)."""
    return evaluate_detections(
        [r.dets for r in records],
        [r.meta for r in records],
        cfg.data.dataroot,
        cfg.data.version,
        split,
        Path(out_dir),
    )


class StageModule(L.LightningModule):
    """Training / inference of the stage ``cfg.stage`` (see the module docstring).

    Attributes tell the datamodule what the stage reads (:class:`~labeldistill.training.stages.
    Stage`): ``needs_lidar`` (multi-sweep points), ``needs_depth`` (LiDAR depth maps for the
    depth loss), ``needs_images`` (camera images) in training, ``eval_needs_lidar`` (points at
    evaluation, None: as ``needs_lidar``).
    """

    def __init__(self, cfg: ExperimentConfig, global_batch: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        self.global_batch = global_batch
        self.stage = stage_of(cfg)
        self.needs_lidar = self.stage.train_needs_lidar(cfg)
        self.needs_depth = self.stage.needs_depth
        self.needs_images = self.stage.needs_images
        self.eval_needs_lidar = self.stage.eval_needs_lidar
        self.model = build_stage_model(cfg)
        if cfg.trainer.channels_last:  # NHWC convolutions (trainer.channels_last)
            to_channels_last(self.model)
        self._records: list[Record] = []
        self.gathered: list[Record] = []
        self.eval_dataset_len: int | None = None

    def compute_losses(self, batch: Batch) -> LossDict:
        """The stage model's weighted loss terms on ``batch`` (their sum is the loss)."""
        return LossDict(self.model.loss(self.model.forward_batch(batch), batch))

    def detect(self, batch: Batch) -> list[Detections]:
        return self.model.detect(batch)

    def init_weights_for_training(self) -> None:
        """Load external initial weights (ImageNet, teachers) before a fresh training run."""
        self.stage.init_weights(self.cfg, self.model)

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
            out = RunDir.of(self.cfg).eval_dir(f"val_epoch_{self.current_epoch}")
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
