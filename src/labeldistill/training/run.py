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
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy

from labeldistill.checkpoint.weights import check_resume_checkpoint, load_weights
from labeldistill.config import ExperimentConfig, dump_config
from labeldistill.errors import CheckpointError
from labeldistill.evaluation.results import results_from_detections, write_results
from labeldistill.io import atomic_write_text, check_output_dir, check_output_file
from labeldistill.training.callbacks import (
    EMACallback,
    StepLimit,
    checkpoint_callback,
    ema_files,
)
from labeldistill.training.datamodule import StageDataModule
from labeldistill.training.run_dir import RunDir
from labeldistill.training.stage_module import Record, StageModule, evaluate_records

log = logging.getLogger(__name__)

#: Lightning messages that say nothing to our users (an advert; the Ctrl-C notice, which the
#: CLI replaces by its own one line).
_LIGHTNING_NOISE = ("💡 Tip:", "\nDetected KeyboardInterrupt")


def _drop_noise(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_LIGHTNING_NOISE)


def _single_lightning_log() -> None:
    """``import lightning`` gives the 'lightning' logger a console handler of its own that also
    propagates to the root logger: with a configured root (the CLI) every line came twice.
    Keep the root's handler then; drop Lightning's advert and Ctrl-C notice."""
    if logging.getLogger().hasHandlers():
        lightning_log = logging.getLogger("lightning")
        for handler in list(lightning_log.handlers):
            lightning_log.removeHandler(handler)
    # Lightning's own deprecation inside its pytree helper, and the notice that a resumed or
    # overwritten run's checkpoint directory is not empty (it is meant to be)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _drop_noise not in logger.filters:
            logger.addFilter(_drop_noise)


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------


def world_size(cfg: ExperimentConfig) -> int:
    return max(1, cfg.trainer.devices) * max(1, cfg.trainer.num_nodes)


def uses_cuda(cfg: ExperimentConfig) -> bool:
    acc = cfg.trainer.accelerator
    return acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AMX tiles or AVX512-BF16), where CPU bf16
    autocast is fast; elsewhere oneDNN emulates it, slower than float32."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(cfg: ExperimentConfig) -> str:
    """``trainer.precision``; ``auto`` -> ``16-mixed`` on CUDA, ``32-true`` otherwise; ``fast``
    -> ``16-mixed`` on CUDA, ``bf16-mixed`` on a CPU with native bf16
    (:func:`cpu_has_native_bf16`), ``32-true`` otherwise."""
    precision = cfg.trainer.precision
    if precision not in ("auto", "fast"):
        return precision
    if uses_cuda(cfg):
        return "16-mixed"
    return "bf16-mixed" if precision == "fast" and cpu_has_native_bf16() else "32-true"


def resolve_strategy(cfg: ExperimentConfig) -> Any:
    """``ddp`` (also chosen by ``auto`` with several devices or nodes) -> DDPStrategy with
    ``find_unused_parameters = trainer.find_unused_parameters`` (default False: every stage uses
    all its trainable parameters; the original's Lightning 1.6 default True costs a graph walk per
    step); on CPU Lightning picks the gloo backend."""
    strategy = cfg.trainer.strategy
    if strategy == "ddp" or (strategy == "auto" and world_size(cfg) > 1):
        return DDPStrategy(find_unused_parameters=cfg.trainer.find_unused_parameters)
    return strategy


def resolve_deterministic(cfg: ExperimentConfig) -> bool | str:
    """Lightning's ``deterministic``: ``trainer.deterministic`` on CPU; on CUDA ``"warn"``
    (``torch.use_deterministic_algorithms(True, warn_only=True)``): the backward of the DepthNet's
    ASPP average pooling and of bilinear upsampling have no deterministic CUDA kernel and would
    raise; they warn and stay non-deterministic, every other op is deterministic."""
    if not cfg.trainer.deterministic:
        return False
    return "warn" if uses_cuda(cfg) else True


def resolve_benchmark(cfg: ExperimentConfig) -> bool:
    """``trainer.cudnn_benchmark``; null -> on with CUDA unless deterministic."""
    if cfg.trainer.cudnn_benchmark is not None:
        return bool(cfg.trainer.cudnn_benchmark)
    return uses_cuda(cfg) and not cfg.trainer.deterministic


def apply_cuda_flags(cfg: ExperimentConfig) -> None:
    """TF32 switches of ``cfg.trainer`` (CUDA runs only; global torch state)."""
    if uses_cuda(cfg):
        torch.backends.cuda.matmul.allow_tf32 = bool(cfg.trainer.matmul_tf32)
        torch.backends.cudnn.allow_tf32 = bool(cfg.trainer.cudnn_tf32)


def build_trainer(
    cfg: ExperimentConfig, callbacks: list[Callback], logger: Any, fit: bool
) -> L.Trainer:
    """A Lightning Trainer from ``cfg.trainer`` and ``cfg.optim.grad_clip``."""
    t = cfg.trainer
    _single_lightning_log()
    validate = fit and t.check_val_every_n_epoch > 0
    apply_cuda_flags(cfg)
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
        deterministic=resolve_deterministic(cfg),  # type: ignore[arg-type]
        benchmark=resolve_benchmark(cfg),
        log_every_n_steps=t.log_every_n_steps,
        # 1.0 (the whole epoch) is Lightning's default; passing it only prints a notice
        limit_train_batches=t.limit_train_batches if t.limit_train_batches < 1.0 else None,
        limit_val_batches=1.0 if validate else 0,
        check_val_every_n_epoch=max(1, t.check_val_every_n_epoch),
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=logger,
        enable_checkpointing=fit,
        use_distributed_sampler=False,  # our datamodule builds seeded samplers itself
        default_root_dir=str(RunDir.of(cfg).root),
        enable_model_summary=fit,
    )


class _StderrProgressBar(TQDMProgressBar):
    """Lightning's tqdm bars on stderr (Lightning draws them on stdout, where they would mix
    with the tables and JSON a command prints)."""

    @staticmethod
    def _on_stderr(make: Any) -> Any:
        saved = sys.stdout
        sys.stdout = sys.stderr
        try:
            return make()
        finally:
            sys.stdout = saved

    def init_train_tqdm(self) -> Any:
        return self._on_stderr(super().init_train_tqdm)

    def init_validation_tqdm(self) -> Any:
        return self._on_stderr(super().init_validation_tqdm)

    def init_predict_tqdm(self) -> Any:
        return self._on_stderr(super().init_predict_tqdm)

    def init_test_tqdm(self) -> Any:
        return self._on_stderr(super().init_test_tqdm)

    def init_sanity_tqdm(self) -> Any:
        return self._on_stderr(super().init_sanity_tqdm)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Close the bars, so that the error line the CLI prints starts a line of its own."""
        for name in ("train", "val", "test", "predict"):
            bar = getattr(self, f"_{name}_progress_bar", None)
            if bar is not None and not getattr(bar, "disable", True):
                bar.close()


def _progress_bar() -> Callback:
    return _StderrProgressBar()


class LossSummary(Callback):
    """Mean of each logged training loss over the last epoch, for the end-of-training line
    (summed on the device; one transfer per epoch)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.last: dict[str, float] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.sums, self.counts = {}, {}

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/") and isinstance(value, torch.Tensor) and value.numel() == 1:
                total = self.sums.get(key)
                value = value.detach().reshape(())
                self.sums[key] = value.clone() if total is None else total + value
                self.counts[key] = self.counts.get(key, 0) + 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.counts:
            self.last = {k: float(self.sums[k]) / self.counts[k] for k in self.sums}

    def text(self) -> str:
        if not self.last:
            return "(none logged)"
        items = sorted(self.last.items())
        return ", ".join(f"{k.removeprefix('train/')} {v:.4f}" for k, v in items)


def _fit_or_predict(trainer: L.Trainer, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``trainer.fit`` / ``trainer.predict``; Lightning turns Ctrl-C into ``sys.exit(1)``
    after its graceful shutdown: give the CLI its KeyboardInterrupt back (exit code 130)."""
    try:
        return fn(*args, **kwargs)
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise


def _module(cfg: ExperimentConfig) -> StageModule:
    return StageModule(cfg, global_batch=cfg.data.batch_size * world_size(cfg))


def _datamodule(
    cfg: ExperimentConfig, module: StageModule, split: str | None = None
) -> StageDataModule:
    return StageDataModule(
        cfg,
        needs_lidar=module.needs_lidar,
        needs_depth=module.needs_depth,
        needs_images=module.needs_images,
        eval_needs_lidar=module.eval_needs_lidar,
        eval_split=split,
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


def _existing_run_files(run: RunDir) -> list[Path]:
    """Checkpoints and EMA files an earlier run left in the run directory."""
    files = sorted(run.checkpoints.glob("*.ckpt")) if run.checkpoints.is_dir() else []
    return files + (ema_files(run.ema) if run.ema.is_dir() else [])


class _RunStart(Callback):
    """When training really starts (set-up, teachers and loaders done; rank 0): remove an earlier
    run's checkpoints and EMA files (``overwrite``) and write ``config.yaml``. A run that fails at
    start-up thus leaves the run directory as it was."""

    def __init__(self, cfg: ExperimentConfig, run: RunDir, stale: list[Path]) -> None:
        self.cfg = cfg
        self.run = run
        self.stale = stale
        self.started = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.monotonic()
        if not trainer.is_global_zero:
            return
        for path in self.stale:
            path.unlink(missing_ok=True)
        if self.stale:
            log.info("removed %d files of the earlier run in %s", len(self.stale), self.run.root)
        atomic_write_text(self.run.config_file, dump_config(self.cfg))


def train(
    cfg: ExperimentConfig, resume: str | Path | None = None, overwrite: bool = False
) -> TrainResult:
    """Train the stage ``cfg.stage``; ``resume`` = a ``.ckpt`` path or ``'last'``.

    A run directory that already holds checkpoints is refused (CheckpointError) unless the run
    is resumed or ``overwrite`` (its checkpoints and EMA files are then replaced).
    """
    _single_lightning_log()
    check_output_dir(cfg.trainer.output_dir, "trainer.output_dir")
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    run = RunDir.of(cfg)
    ckpt_path = run.resolve_resume(resume)
    stale = _existing_run_files(run) if ckpt_path is None else []
    if stale and not overwrite:
        raise CheckpointError(
            f"run directory {run.root} already holds checkpoints of an earlier run (e.g. "
            f"{stale[0].name}): continue it with --resume last, start again with --overwrite, "
            "or choose another name / trainer.output_dir"
        )
    module = _module(cfg)
    if ckpt_path is None:
        module.init_weights_for_training()
    else:
        check_resume_checkpoint(module, ckpt_path)
    dm = _datamodule(cfg, module)
    ema_cb = (
        EMACallback(
            cfg.trainer.ema_decay,
            run.ema,
            cfg.trainer.ema_warmup_steps,
            cfg.trainer.keep_epochs,
        )
        if cfg.trainer.ema
        else None
    )
    start = _RunStart(cfg, run, stale)
    losses = LossSummary()
    callbacks: list[Callback] = [start, checkpoint_callback(cfg), _progress_bar(), losses]
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
    log.info(
        "training %s (stage %s) -> %s%s",
        cfg.name,
        cfg.stage,
        run.root,
        f", resuming from {ckpt_path}" if ckpt_path else "",
    )
    _fit_or_predict(
        trainer,
        trainer.fit,
        module,
        datamodule=dm,
        ckpt_path=str(ckpt_path) if ckpt_path else None,
    )
    if trainer.interrupted:
        raise KeyboardInterrupt
    last = run.last_checkpoint
    ema_path = None
    if ema_cb is not None:
        candidate = run.ema / f"epoch_{trainer.current_epoch - 1}.safetensors"
        files = ema_files(run.ema)
        ema_path = candidate if candidate.is_file() else (files[-1] if files else None)
    result = TrainResult(run_dir=run.root, last_ckpt=last, ema_weights=ema_path)
    if trainer.is_global_zero:
        elapsed = time.monotonic() - start.started if start.started else 0.0
        log.info(
            "finished %s: %d steps, %d epoch(s) in %.0f s; mean losses of the last epoch: %s; "
            "checkpoint %s%s",
            cfg.name,
            trainer.global_step,
            trainer.current_epoch,
            elapsed,
            losses.text(),
            last,
            f", EMA weights {ema_path}" if ema_path else "",
        )
    return result


# --------------------------------------------------------------------------------------------
# Inference, evaluation, prediction
# --------------------------------------------------------------------------------------------


def _resolve_ckpt(cfg: ExperimentConfig, ckpt: str | Path | None) -> Path:
    path = Path(ckpt) if ckpt is not None else RunDir.of(cfg).last_checkpoint
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
    _single_lightning_log()
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    module = _module(cfg)
    load_weights(module.model, path, prefer_ema=prefer_ema)
    dm = _datamodule(cfg, module, split)
    module.eval_dataset_len = len(dm.eval_dataset)
    trainer = build_trainer(cfg, [_progress_bar()], logger=False, fit=False)
    _fit_or_predict(trainer, trainer.predict, module, datamodule=dm, return_predictions=False)
    return module.gathered


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
    out = Path(out_dir) if out_dir is not None else default_eval_dir(path)
    check_output_dir(out, "--out" if out_dir is not None else "output directory (--out)")
    records = infer(cfg, path, cfg.data.val_split, prefer_ema=prefer_ema)
    if not _is_rank_zero():
        return {}
    metrics = evaluate_records(cfg, records, cfg.data.val_split, out.resolve())
    log.info(
        "%s on %s: mAP %.4f NDS %.4f", path, cfg.data.val_split, metrics["mAP"], metrics["NDS"]
    )
    return metrics


def predict(
    cfg: ExperimentConfig, ckpt: str | Path | None, split: str | None, out: str | Path
) -> Path:
    """Write the nuScenes result JSON of ``split`` (default: the val split) to ``out``."""
    split = split or cfg.data.val_split
    out = check_output_file(out, "--out")
    records = infer(cfg, ckpt, split)
    if _is_rank_zero():
        results = results_from_detections([r.dets for r in records], [r.meta for r in records])
        write_results(out, results)
    return out


def train_and_evaluate(cfg: ExperimentConfig) -> dict[str, Any]:
    """Train ``cfg`` from scratch, then evaluate its last checkpoint (EMA weights when on) on
    the val split; returns the metrics dict (``{}`` on non-zero ranks). An earlier run of the
    same name is replaced (it trains from scratch by definition)."""
    result = train(cfg, overwrite=True)
    return evaluate(cfg, result.last_ckpt, RunDir(result.run_dir).eval_dir("last"))


def _is_rank_zero() -> bool:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return True
