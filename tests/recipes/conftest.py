"""The recording stage runner of the recipe tests (injected, nothing monkeypatched)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from labeldistill.config import ExperimentConfig
from labeldistill.evaluation.results import write_results
from labeldistill.training import backbone_pretrain
from labeldistill.training.run import TrainResult
from labeldistill.training.run_dir import RunDir


class Calls(list):
    """The recorded calls, in order: ``("train", cfg)``, ``("resume", cfg, ckpt)``,
    ``("eval", cfg)``, ``("pretrain", exp, cfg)``; ``runner`` records into it."""

    def __init__(self) -> None:
        super().__init__()
        self.runner = FakeRunner(self)
        #: results JSON each evaluation writes (``results_nusc.json``), None: none
        self.results_of: Callable[[], Any] | None = None


class FakeRunner:
    """Training writes a last.ckpt of ``trainer.max_steps`` steps; evaluation returns metrics
    whose mAP encodes the call order; stage 0 writes a backbone file."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def train(
        self, cfg: ExperimentConfig, resume: str | Path | None = None, overwrite: bool = False
    ) -> TrainResult:
        self.calls.append(("train", cfg) if resume is None else ("resume", cfg, Path(resume)))
        ckpt = RunDir.of(cfg).last_checkpoint
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"global_step": cfg.trainer.max_steps, "state_dict": {}}, ckpt)
        return TrainResult(ckpt.parent.parent, ckpt, None)

    def evaluate(
        self, cfg: ExperimentConfig, ckpt: str | Path | None, out_dir: str | Path | None = None
    ) -> dict[str, Any]:
        self.calls.append(("eval", cfg))
        metrics = {
            "mAP": 0.1 * len(self.calls),
            "NDS": 0.5,
            "mATE": 0.3,
            "mASE": 0.2,
            "mAOE": 0.4,
            "mAVE": 1.0,
            "mAAE": 0.6,
            "ap_by_distance": {"0-20": 0.25, "20-30": None, ">30": 0.125},
        }
        assert out_dir is not None
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics))
        if self.calls.results_of is not None:
            write_results(Path(out_dir) / "results_nusc.json", self.calls.results_of())
        return metrics

    def pretrain_backbone(
        self,
        exp: ExperimentConfig,
        out_dir: Path,
        cfg: backbone_pretrain.PretrainConfig,
        fresh: bool = False,
    ) -> backbone_pretrain.PretrainResult:
        self.calls.append(("pretrain", exp, cfg))
        path = Path(out_dir) / backbone_pretrain.BACKBONE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("backbone")
        return backbone_pretrain.PretrainResult(path, {"train_seconds": 1.0})


@pytest.fixture()
def fake_runs() -> Calls:
    """The list of recorded calls; pass ``fake_runs.runner`` to the recipe."""
    return Calls()
