"""The data side of every stage: datasets and loaders from the experiment's DataConfig.

* training split: augmentation (``data.augment``), depth maps only if the stage needs them,
  LiDAR points only if it needs them, ``drop_last``; shuffled by a DistributedSampler seeded
  with ``trainer.seed`` (one process: a sampler with one replica), so the order depends only
  on (seed, epoch) and a resumed run sees the same batches as an uninterrupted one;
* evaluation split: no augmentation, no depth, a non-shuffling DistributedSampler (padded to a
  multiple of the world size; :func:`~labeldistill.training.stage_module.gather_records` drops the
  padding);
* images travel as uint8 (``data.uint8_images``), pinned (``Batch.pin_memory``) when CUDA is
  available, copied with ``non_blocking=True`` and normalised by the student on the device;
* ``set_epoch(epoch)`` is forwarded to the training dataset (its per-item augmentation seeds);
  Lightning calls ``set_epoch`` of the sampler itself. Workers are not persistent, so every
  epoch's workers see the new epoch.
"""

from __future__ import annotations

import dataclasses
import logging

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from labeldistill.config import DataConfig, ExperimentConfig
from labeldistill.data.dataset import NuScenesDataset, build_dataset, collate
from labeldistill.errors import DataError

log = logging.getLogger(__name__)


def stage_data_config(
    cfg: ExperimentConfig, needs_lidar: bool, needs_depth: bool, needs_images: bool = True
) -> DataConfig:
    """``cfg.data`` with LiDAR points, depth maps and images switched to what the stage reads
    in training."""
    return dataclasses.replace(
        cfg.data,
        return_lidar=bool(needs_lidar or cfg.data.return_lidar),
        return_depth=bool(needs_depth and cfg.data.return_depth),
        return_images=bool(needs_images and cfg.data.return_images),
    )


class StageDataModule(L.LightningDataModule):
    """Loaders of one experiment.

    Args:
        cfg: the experiment config (``data`` section, ``trainer.seed``).
        needs_lidar / needs_depth / needs_images: what the stage reads in training (its
            module's attributes).
        eval_needs_lidar: whether the stage reads LiDAR points at evaluation / prediction
            (default ``needs_lidar``); when False the eval dataset opens no scan, whatever
            ``data.return_lidar`` says (a LabelDistill student is evaluated without teachers).
        eval_split: the split of the test / predict / validation loader (default
            ``data.val_split``).
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        *,
        needs_lidar: bool,
        needs_depth: bool,
        needs_images: bool = True,
        eval_needs_lidar: bool | None = None,
        eval_split: str | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.data_cfg = stage_data_config(cfg, needs_lidar, needs_depth, needs_images)
        eval_lidar = needs_lidar if eval_needs_lidar is None else eval_needs_lidar
        self.eval_data_cfg = dataclasses.replace(self.data_cfg, return_lidar=bool(eval_lidar))
        self.eval_split = eval_split or cfg.data.val_split
        self._train: NuScenesDataset | None = None
        self._eval: NuScenesDataset | None = None

    # datasets are built lazily (each rank builds its own; info files are small)

    @property
    def train_dataset(self) -> NuScenesDataset:
        if self._train is None:
            self._train = build_dataset(
                self.data_cfg,
                self.cfg.data.train_split,
                train=True,
                seed=self.cfg.trainer.seed,
                uint8_images=self.cfg.data.uint8_images,
            )
        return self._train

    @property
    def eval_dataset(self) -> NuScenesDataset:
        if self._eval is None:
            self._eval = build_dataset(
                self.eval_data_cfg,
                self.eval_split,
                train=False,
                seed=self.cfg.trainer.seed,
                uint8_images=self.cfg.data.uint8_images,
            )
        return self._eval

    def set_epoch(self, epoch: int) -> None:
        if self._train is not None:
            self._train.set_epoch(epoch)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader(self, dataset: NuScenesDataset, train: bool) -> DataLoader:
        world, rank = self._world()
        sampler: DistributedSampler[int] = DistributedSampler(
            dataset,
            num_replicas=world,
            rank=rank,
            shuffle=train,
            seed=self.cfg.trainer.seed,
            drop_last=False,
        )
        workers = self.cfg.data.num_workers
        return DataLoader(
            dataset,
            batch_size=self.cfg.data.batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate,
            drop_last=train,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        ds = self.train_dataset
        world, _ = self._world()
        if len(ds) < self.cfg.data.batch_size * world:
            raise DataError(
                f"split {self.cfg.data.train_split} has {len(ds)} samples, fewer than one global "
                f"batch ({self.cfg.data.batch_size} x {world}): lower data.batch_size"
            )
        return self._loader(ds, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset, train=False)
