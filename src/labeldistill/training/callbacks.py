"""Lightning callbacks: the exponential moving average of the weights (METHOD.md 9.3), the
step limit, and the epoch checkpoints (:func:`checkpoint_callback`).

The original's ``ModelEMA`` keeps a copy of the whole model and, after every training batch,
updates every floating-point state entry (parameters *and* BatchNorm running statistics):
``ema = decay * ema + (1 - decay) * current``. Its decay ramp
``decay * (1 - exp(-n / 2000))`` starts at ``n = len(train_set) * max_epochs``, so it is the
constant ``decay`` (0.999) from the first step; we use the constant directly. Integer buffers
(``num_batches_tracked``) are not averaged; the saved EMA state carries the model's current
value for them.

Lightning's own ``WeightAveraging`` is not used: its first update copies the current weights
instead of blending them into the initial ones, and it averages integer buffers too.

The EMA state is saved
* every epoch (rank 0) to ``<run_dir>/ema/epoch_<n>.safetensors`` (``n`` 0-based, as the
  Lightning checkpoint ``epoch_<n>.ckpt`` of the same epoch), keys = the stage model's
  state-dict keys (no ``model.`` prefix);
* inside every Lightning checkpoint as ``checkpoint["ema_state_dict"]`` (same keys), so that
  ``--resume`` continues the average and evaluation prefers it.

During validation inside ``fit`` (only when ``trainer.check_val_every_n_epoch`` > 0) the EMA
weights are swapped in and swapped back afterwards.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

from labeldistill.checkpoint.weights import EMA_KEY, save_safetensors
from labeldistill.config import ExperimentConfig
from labeldistill.errors import ConfigError
from labeldistill.training.run_dir import RunDir

log = logging.getLogger(__name__)


def check_keep_epochs(keep: int) -> int:
    """``trainer.keep_epochs``: -1 (keep every epoch) or >= 1; ConfigError otherwise."""
    if keep == -1 or keep >= 1:
        return keep
    raise ConfigError(f"trainer.keep_epochs must be -1 (keep every epoch) or >= 1, got {keep}")


def checkpoint_callback(cfg: ExperimentConfig) -> ModelCheckpoint:
    """A ``.ckpt`` at the end of every epoch (``epoch_<n>.ckpt``, 0-based) plus ``last.ckpt``;
    only the newest ``trainer.keep_epochs`` epoch files stay on disk (-1: all)."""
    keep = check_keep_epochs(cfg.trainer.keep_epochs)
    return ModelCheckpoint(
        dirpath=RunDir.of(cfg).checkpoints,
        filename="epoch_{epoch}",
        auto_insert_metric_name=False,
        # Ranking by epoch (max) keeps the newest ``keep``; Lightning deletes the others.
        monitor=None if keep == -1 else "epoch",
        mode="max",
        save_top_k=keep,
        every_n_epochs=1,
        save_last=True,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )


def _target(pl_module: L.LightningModule) -> nn.Module:
    """The averaged module: the stage module's ``model`` attribute."""
    return pl_module.model  # type: ignore[return-value]


class ModelEMA:
    """EMA of every floating-point state entry of ``module`` (parameters and buffers).

    ``update`` implements ``ema <- d * ema + (1 - d) * value`` in place with the constant
    ``d = decay`` (``warmup_steps`` 0, the paper); after ``n`` updates with constant values
    ``v`` the state is ``decay**n * ema0 + (1 - decay**n) * v``. With ``warmup_steps`` > 0 the
    decay of update ``n`` (1-based) is ``decay * (1 - exp(-n / warmup_steps))`` (the ramp of
    the original ``ModelEMA``, which its step offset disables), for short runs.
    """

    def __init__(self, module: nn.Module, decay: float, warmup_steps: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.num_updates = 0
        self.state: dict[str, Tensor] = {
            k: v.detach().clone()
            for k, v in module.state_dict().items()
            if torch.is_floating_point(v)
        }

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if self.warmup_steps <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-(self.num_updates + 1) / self.warmup_steps))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        decay = self.current_decay()
        current = module.state_dict()
        ema_tensors = []
        model_tensors = []
        for k, ema in self.state.items():
            value = current[k].detach()
            if ema.device != value.device:
                self.state[k] = ema = ema.to(value.device)
            ema_tensors.append(ema)
            model_tensors.append(value.to(ema.dtype))
        if ema_tensors:
            # ema = decay * ema + (1 - decay) * value  ==  lerp(ema, value, 1 - decay)
            torch._foreach_lerp_(ema_tensors, model_tensors, 1.0 - decay)
        self.num_updates += 1

    def full_state_dict(self, module: nn.Module) -> dict[str, Tensor]:
        """The EMA floats merged with the module's non-float entries (a loadable state dict)."""
        return {k: (self.state.get(k, v)).detach().clone() for k, v in module.state_dict().items()}

    def swap_into(self, module: nn.Module) -> None:
        """Exchange the module's float state with the EMA state (call twice to undo)."""
        current = module.state_dict()
        with torch.no_grad():
            for k, ema in self.state.items():
                tmp = current[k].detach().clone()
                current[k].copy_(ema)
                ema.copy_(tmp)


def ema_files(ema_dir: Path) -> list[Path]:
    """The ``epoch_<n>.safetensors`` files of ``ema_dir``, oldest epoch first."""

    def epoch(path: Path) -> int:
        stem = path.stem.removeprefix("epoch_")
        return int(stem) if stem.isdigit() else -1

    return sorted(ema_dir.glob("epoch_*.safetensors"), key=epoch)


class EMACallback(L.Callback):
    """Keeps a :class:`ModelEMA` of ``pl_module.model``, updated after every training batch.

    Args:
        decay: the EMA decay (0.999 in the paper).
        warmup_steps: 0 = constant decay (paper); else the ramp of :class:`ModelEMA`.
        ema_dir: where ``epoch_<n>.safetensors`` files go (rank 0); None: not written.
        keep_epochs: how many of those files stay (the newest); -1: all.
    """

    def __init__(
        self,
        decay: float,
        ema_dir: str | Path | None,
        warmup_steps: int = 0,
        keep_epochs: int = -1,
    ) -> None:
        super().__init__()
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.ema_dir = Path(ema_dir) if ema_dir is not None else None
        self.keep_epochs = keep_epochs
        self.ema: ModelEMA | None = None
        self._pending: dict[str, Tensor] | None = None
        self._pending_updates = 0
        self._swapped = False

    @property
    def state_key(self) -> str:
        return "EMACallback"

    # -- lifecycle ------------------------------------------------------------------------

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module = _target(pl_module)
        self.ema = ModelEMA(module, self.decay, self.warmup_steps)
        if self._pending is not None:  # resumed: continue the saved average
            missing = set(self.ema.state) - set(self._pending)
            if missing:
                log.warning(
                    "EMA state in the checkpoint lacks %d entries; restarting them", len(missing)
                )
            device = next(iter(module.state_dict().values())).device
            for k in self.ema.state:
                if k in self._pending:
                    self.ema.state[k] = self._pending[k].to(
                        device=device, dtype=self.ema.state[k].dtype
                    )
            self.ema.num_updates = self._pending_updates
            self._pending = None

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        assert self.ema is not None
        self.ema.update(_target(pl_module))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.ema is None or self.ema_dir is None or not trainer.is_global_zero:
            return
        path = self.ema_dir / f"epoch_{trainer.current_epoch}.safetensors"
        save_safetensors(
            path,
            self.ema.full_state_dict(_target(pl_module)),
            metadata={
                "kind": "ema",
                "epoch": str(trainer.current_epoch),
                "global_step": str(trainer.global_step),
                "decay": str(self.decay),
            },
        )
        log.info("EMA weights of epoch %d -> %s", trainer.current_epoch, path)
        if self.keep_epochs > 0:
            for old in ema_files(self.ema_dir)[: -self.keep_epochs]:
                old.unlink(missing_ok=True)

    # -- validation inside fit uses the EMA weights ------------------------------------------

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.ema is not None and trainer.training is False and trainer.state.fn == "fit":
            self.ema.swap_into(_target(pl_module))
            self._swapped = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._swapped and self.ema is not None:
            self.ema.swap_into(_target(pl_module))
            self._swapped = False

    # -- checkpointing -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.ema.num_updates if self.ema else 0}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_updates = int(state_dict.get("num_updates", 0))

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.ema is not None:
            state = self.ema.full_state_dict(_target(pl_module))
            checkpoint[EMA_KEY] = {k: v.cpu() for k, v in state.items()}

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if EMA_KEY in checkpoint:
            self._pending = checkpoint[EMA_KEY]


class StepLimit(L.Callback):
    """Stops ``fit`` once ``max_steps`` optimizer steps are done (``trainer.max_steps``).

    Lightning's own ``max_steps`` switches its loops to "iteration-based" restarts: resumed from
    an end-of-epoch checkpoint, it re-enters the epoch that had finished, trains one step more
    and overwrites that epoch's files. Stopping through ``trainer.should_stop`` instead keeps
    Lightning's epoch-based resume, which continues exactly where the checkpoint was written;
    the uninterrupted run stops at the same step as with Lightning's limit (the epoch is closed
    and its checkpoint written).
    """

    def __init__(self, max_steps: int) -> None:
        super().__init__()
        self.max_steps = max_steps

    def _check(self, trainer: L.Trainer) -> None:
        if self.max_steps >= 0 and trainer.global_step >= self.max_steps:
            if not trainer.should_stop:
                log.info("stopping: trainer.max_steps=%d reached", self.max_steps)
            trainer.should_stop = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._check(trainer)
