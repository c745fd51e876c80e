"""Train, evaluate and predict a config: what ``labeldistill train / eval / predict`` call.

* :func:`train` fits the stage module of ``cfg.stage`` (checkpoints, EMA, TensorBoard under
  ``<output_dir>/<name>/``) and returns the paths it wrote;
* :func:`evaluate` loads weights (EMA preferred), predicts the validation split on every rank,
  gathers in dataset order and, on rank 0, runs the official nuScenes evaluation;
* :func:`predict` writes the nuScenes result JSON of a split;
* :func:`train_and_evaluate` chains the first two (the demo's path) and returns the metrics.

The run directory layout is documented in docs/training.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy

from labeldistill.config import ExperimentConfig, dump_config
from labeldistill.data.io import atomic_write_text
from labeldistill.errors import CheckpointError
from labeldistill.training.callbacks import EMACallback, StepLimit, ema_files
from labeldistill.training.checkpoints import (
    checkpoint_callback,
    ema_dir,
    last_checkpoint,
    load_weights,
    resolve_resume,
    run_dir,
)
from labeldistill.training.datamodule import StageDataModule
from labeldistill.training.modules import Record, StageModule, stage_module_class

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------


def world_size(cfg: ExperimentConfig) -> int:
    return max(1, cfg.trainer.devices) * max(1, cfg.trainer.num_nodes)


def uses_cuda(cfg: ExperimentConfig) -> bool:
    acc = cfg.trainer.accelerator
    return acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())


def resolve_precision(cfg: ExperimentConfig) -> str:
    """``trainer.precision``; ``auto`` -> ``16-mixed`` on CUDA, ``32-true`` otherwise."""
    if cfg.trainer.precision != "auto":
        return cfg.trainer.precision
    return "16-mixed" if uses_cuda(cfg) else "32-true"


def resolve_strategy(cfg: ExperimentConfig) -> Any:
    """``ddp`` (also chosen by ``auto`` with several devices or nodes) -> DDPStrategy with
    ``find_unused_parameters=True`` (the original's Lightning 1.6 default); on CPU Lightning
    picks the gloo backend."""
    strategy = cfg.trainer.strategy
    if strategy == "ddp" or (strategy == "auto" and world_size(cfg) > 1):
        return DDPStrategy(find_unused_parameters=True)
    return strategy


def build_trainer(
    cfg: ExperimentConfig, callbacks: list[Callback], logger: Any, fit: bool
) -> L.Trainer:
    """A Lightning Trainer from ``cfg.trainer`` and ``cfg.optim.grad_clip``."""
    t = cfg.trainer
    validate = fit and t.check_val_every_n_epoch > 0
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=resolve_strategy(cfg),
        precision=resolve_precision(cfg),  # type: ignore[arg-type]
        max_epochs=t.max_epochs,
        # trainer.max_steps is applied by the StepLimit callback of train() (exact resume)
        gradient_clip_val=cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else None,
        gradient_clip_algorithm="norm",
        deterministic=t.deterministic,
        log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=1.0 if validate else 0,
        check_val_every_n_epoch=max(1, t.check_val_every_n_epoch),
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=logger,
        enable_checkpointing=fit,
        use_distributed_sampler=False,  # our datamodule builds seeded samplers itself
        default_root_dir=str(run_dir(cfg)),
        enable_model_summary=fit,
    )


def _module(cfg: ExperimentConfig) -> StageModule:
    cls = stage_module_class(cfg)
    return cls(cfg, global_batch=cfg.data.batch_size * world_size(cfg))


def _datamodule(
    cfg: ExperimentConfig, module: StageModule, split: str | None = None
) -> StageDataModule:
    return StageDataModule(
        cfg, needs_lidar=module.needs_lidar, needs_depth=module.needs_depth, eval_split=split
    )


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a training run wrote: its directory, the last Lightning checkpoint (raw weights and,
    with EMA on, ``ema_state_dict``) and the last epoch's EMA safetensors (None without EMA)."""

    run_dir: Path
    last_ckpt: Path
    ema_weights: Path | None


def train(cfg: ExperimentConfig, resume: str | Path | None = None) -> TrainResult:
    """Train the stage ``cfg.stage``; ``resume`` = a ``.ckpt`` path or ``'last'``."""
    L.seed_everything(cfg.trainer.seed, workers=True)
    ckpt_path = resolve_resume(cfg, resume)
    module = _module(cfg)
    if ckpt_path is None:
        module.init_weights_for_training()
    dm = _datamodule(cfg, module)
    ema_cb = (
        EMACallback(
            cfg.trainer.ema_decay,
            ema_dir(cfg),
            cfg.trainer.ema_warmup_steps,
            cfg.trainer.keep_epochs,
        )
        if cfg.trainer.ema
        else None
    )
    callbacks: list[Callback] = [checkpoint_callback(cfg), TQDMProgressBar()]
    if cfg.trainer.max_steps >= 0:
        callbacks.append(StepLimit(cfg.trainer.max_steps))
    callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if ema_cb is not None:
        callbacks.insert(0, ema_cb)
    logger = TensorBoardLogger(
        save_dir=cfg.trainer.output_dir, name=cfg.name, default_hp_metric=False
    )
    trainer = build_trainer(cfg, callbacks, logger, fit=True)
    module.eval_dataset_len = None
    if trainer.is_global_zero:
        atomic_write_text(run_dir(cfg) / "config.yaml", dump_config(cfg))
    log.info(
        "training %s (stage %s) -> %s%s",
        cfg.name,
        cfg.stage,
        run_dir(cfg),
        f", resuming from {ckpt_path}" if ckpt_path else "",
    )
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)
    last = last_checkpoint(cfg)
    ema_path = None
    if ema_cb is not None:
        candidate = ema_dir(cfg) / f"epoch_{trainer.current_epoch - 1}.safetensors"
        files = ema_files(ema_dir(cfg))
        ema_path = candidate if candidate.is_file() else (files[-1] if files else None)
    return TrainResult(run_dir=run_dir(cfg), last_ckpt=last, ema_weights=ema_path)


# --------------------------------------------------------------------------------------------
# Inference, evaluation, prediction
# --------------------------------------------------------------------------------------------


def _resolve_ckpt(cfg: ExperimentConfig, ckpt: str | Path | None) -> Path:
    path = Path(ckpt) if ckpt is not None else last_checkpoint(cfg)
    if not path.is_file():
        hint = "pass --ckpt FILE" if ckpt is None else "check the path"
        raise CheckpointError(f"checkpoint {path} not found: {hint}")
    return path


def infer(
    cfg: ExperimentConfig,
    ckpt: str | Path | None,
    split: str | None = None,
    prefer_ema: bool = True,
) -> list[Record]:
    """Detections of every sample of ``split`` (default: the val split), in dataset order.

    Runs on every rank of the configured devices; each rank returns the full gathered list.
    """
    path = _resolve_ckpt(cfg, ckpt)
    L.seed_everything(cfg.trainer.seed, workers=True)
    module = _module(cfg)
    load_weights(module.model, path, prefer_ema=prefer_ema)
    dm = _datamodule(cfg, module, split)
    module.eval_dataset_len = len(dm.eval_dataset)
    trainer = build_trainer(cfg, [TQDMProgressBar()], logger=False, fit=False)
    trainer.predict(module, datamodule=dm, return_predictions=False)
    return module.gathered


def evaluate_records(
    cfg: ExperimentConfig, records: list[Record], split: str, out_dir: str | Path
) -> dict[str, Any]:
    """Official nuScenes metrics of ``records`` on ``split`` (results_nusc.json, metrics.json
    and the devkit's files in ``out_dir``)."""
    from labeldistill.evaluation.nuscenes_eval import evaluate_detections

    out = Path(out_dir)
    return evaluate_detections(
        [r.dets for r in records],
        [r.meta for r in records],
        cfg.data.dataroot,
        cfg.data.version,
        split,
        out,
    )


def default_eval_dir(ckpt: Path) -> Path:
    """``<ckpt dir>/<ckpt stem>_eval``: next to the checkpoint."""
    return ckpt.parent / f"{ckpt.stem}_eval"


def evaluate(
    cfg: ExperimentConfig,
    ckpt: str | Path | None,
    out_dir: str | Path | None = None,
    prefer_ema: bool = True,
) -> dict[str, Any]:
    """Official metrics of a checkpoint on ``data.val_split`` (EMA weights preferred unless
    ``prefer_ema`` is False). Returns the metrics dict on rank 0 and ``{}`` on the others.
    """
    path = _resolve_ckpt(cfg, ckpt)
    records = infer(cfg, path, cfg.data.val_split, prefer_ema=prefer_ema)
    if not _is_rank_zero():
        return {}
    out = Path(out_dir) if out_dir is not None else default_eval_dir(path)
    metrics = evaluate_records(cfg, records, cfg.data.val_split, out.resolve())
    log.info(
        "%s on %s: mAP %.4f NDS %.4f", path, cfg.data.val_split, metrics["mAP"], metrics["NDS"]
    )
    return metrics


def predict(
    cfg: ExperimentConfig, ckpt: str | Path | None, split: str | None, out: str | Path
) -> Path:
    """Write the nuScenes result JSON of ``split`` (default: the val split) to ``out``."""
    from labeldistill.evaluation.nuscenes_eval import results_from_detections, write_results

    split = split or cfg.data.val_split
    records = infer(cfg, ckpt, split)
    out = Path(out)
    if _is_rank_zero():
        results = results_from_detections([r.dets for r in records], [r.meta for r in records])
        write_results(out, results)
    return out


def train_and_evaluate(cfg: ExperimentConfig) -> dict[str, Any]:
    """Train ``cfg`` from scratch, then evaluate its last checkpoint (EMA weights when on) on
    the val split; returns the metrics dict (``{}`` on non-zero ranks)."""
    result = train(cfg)
    return evaluate(cfg, result.last_ckpt, result.run_dir / "eval" / "last")


def _is_rank_zero() -> bool:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return True
