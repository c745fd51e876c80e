"""The run directory built once from the config, and ``--resume`` paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from labeldistill.config import ExperimentConfig, TrainerConfig
from labeldistill.errors import CheckpointError
from labeldistill.training.run_dir import RunDir


def test_resume_resolution(tmp_path: Path) -> None:
    cfg = ExperimentConfig(name="exp", trainer=TrainerConfig(output_dir=str(tmp_path)))
    assert RunDir.of(cfg).resolve_resume(None) is None
    with pytest.raises(CheckpointError, match="last.ckpt"):
        RunDir.of(cfg).resolve_resume("last")
    last = RunDir.of(cfg).last_checkpoint
    assert last == tmp_path / "exp" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"x")
    assert RunDir.of(cfg).resolve_resume("last") == last
