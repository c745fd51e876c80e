"""The directory of one experiment (docs/training.md), built once from the config.

``<trainer.output_dir>/<name>/``: ``config.yaml``, ``checkpoints/`` (``epoch_<n>.ckpt``,
``last.ckpt``), ``ema/`` (``epoch_<n>.safetensors``), ``eval/`` and the TensorBoard logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from labeldistill.config import ExperimentConfig
from labeldistill.errors import CheckpointError

#: ``--resume last`` and the name of the newest Lightning checkpoint (``last.ckpt``).
LAST = "last"


@dataclass(frozen=True)
class RunDir:
    """Paths of one run below ``root`` = ``<trainer.output_dir>/<name>``."""

    root: Path

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> RunDir:
        return cls(Path(cfg.trainer.output_dir) / cfg.name)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def ema(self) -> Path:
        return self.root / "ema"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / f"{LAST}.ckpt"

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    def eval_dir(self, name: str) -> Path:
        """``eval/<name>`` (``last``, ``val_epoch_<n>``)."""
        return self.root / "eval" / name

    def resolve_resume(self, resume: str | Path | None) -> Path | None:
        """``None`` -> None; ``'last'`` -> :attr:`last_checkpoint`; else an existing path."""
        if resume is None:
            return None
        path = self.last_checkpoint if str(resume) == LAST else Path(resume)
        if not path.is_file():
            raise CheckpointError(
                f"cannot resume: checkpoint {path} not found (train first, or pass --resume PATH)"
            )
        return path
