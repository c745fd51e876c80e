"""``labeldistill pipeline``: every LabelDistill stage in order, the baseline with the same
budget, the official metric of each, one table (METHOD.md 9.1).

Stages (each a config; the teachers' checkpoints are handed to the later stages):

1. ``lidar_teacher``  - CenterPoint on LiDAR (stage 1);
2. ``label_encoder``  - the label encoder decoded by the frozen teacher (stage 2); its
   evaluation decodes the GT of the val split: an upper bound, not a detector;
3. ``baseline``       - BEVDepth with the student's architecture and budget, no distillation;
4. ``labeldistill``   - the distilled student (stage 3), and optional ablations
   (``lidar_only``, ``label_only``, ``no_partition``).

A budget names the configs and the training length of every stage. A stage whose run
directory already holds ``checkpoints/last.ckpt`` of ``trainer.max_steps`` steps and whose
evaluation already holds ``metrics.json`` is not run again (so an interrupted pipeline or a
benchmark with several variants reuses the teachers); a ``last.ckpt`` of fewer steps is
continued to the budget's length; ``fresh=True`` retrains everything.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from labeldistill.checkpoint.weights import checkpoint_step
from labeldistill.config import ExperimentConfig, load_config
from labeldistill.errors import ConfigError
from labeldistill.recipes.budgets import BUDGETS, VARIANTS, Budget
from labeldistill.training import backbone_pretrain, run
from labeldistill.training.backbone_pretrain import PretrainConfig, PretrainResult
from labeldistill.training.run import TrainResult
from labeldistill.training.run_dir import RunDir

log = logging.getLogger(__name__)

#: Table rows in order: key -> printed name.
ROW_NAMES: dict[str, str] = {
    "lidar_teacher": "LiDAR teacher (CenterPoint)",
    "label_encoder": "label-encoder decode (upper bound)",
    "baseline": "baseline BEVDepth",
    "lidar_only": "LiDAR teacher only",
    "label_only": "label teacher only",
    "no_partition": "no partitioning",
    "labeldistill": "LabelDistill",
    "lidar_s0_detached": "LabelDistill, LiDAR S0 slice detached",
    "level0_detached": "LabelDistill, both S0 slices detached",
}


@dataclass
class StageResult:
    """One row: the stage key, its config name, checkpoint, official metrics and the
    evaluation directory (``metrics.json``, ``results_nusc.json``)."""

    key: str
    config: str
    ckpt: Path
    metrics: dict[str, Any]
    eval_dir: Path | None = None


@dataclass
class PipelineResult:
    """Every evaluated stage in run order, where the runs live, and stage 0 when the budget
    has one (its backbone file and segmentation metrics)."""

    out_dir: Path
    rows: list[StageResult] = field(default_factory=list)
    backbone: Any = None  # backbone_pretrain.PretrainResult | None

    def by_key(self) -> dict[str, StageResult]:
        return {r.key: r for r in self.rows}


def stage_config(
    budget: Budget,
    key: str,
    dataroot: str | Path | None,
    runs_dir: Path,
    seed: int,
    teacher_ckpts: Mapping[str, Path],
    extra: Sequence[str] = (),
) -> ExperimentConfig:
    """The config of stage ``key`` in ``budget``: data root, output dir, seed, the budget's
    overrides, the teacher checkpoints of earlier stages, then ``extra``."""
    if key not in budget.stages:
        raise ConfigError(f"budget {budget.name} has no stage '{key}' ({', '.join(budget.stages)})")
    plan = budget.stages[key]
    overrides = [f"trainer.output_dir={runs_dir}", f"trainer.seed={seed}"]
    if dataroot is not None:
        overrides.append(f"data.dataroot={dataroot}")
    overrides.extend(plan.overrides)
    for name, path in teacher_ckpts.items():
        overrides.append(f"distill.{name}={path}")
    overrides.extend(extra)
    return load_config(plan.config, overrides)


class StageRunner(Protocol):
    """What the pipeline needs to run a stage; :class:`LightningRunner` by default (tests pass
    a recorder)."""

    def train(
        self, cfg: ExperimentConfig, resume: str | Path | None = None, overwrite: bool = False
    ) -> TrainResult: ...

    def evaluate(
        self, cfg: ExperimentConfig, ckpt: str | Path | None, out_dir: str | Path | None = None
    ) -> dict[str, Any]: ...

    def pretrain_backbone(
        self, exp: ExperimentConfig, out_dir: Path, cfg: PretrainConfig, fresh: bool = False
    ) -> PretrainResult: ...


class LightningRunner:
    """The real stages: :func:`labeldistill.training.run.train` / ``evaluate`` and stage 0's
    :func:`~labeldistill.training.backbone_pretrain.pretrain_backbone`."""

    def train(
        self, cfg: ExperimentConfig, resume: str | Path | None = None, overwrite: bool = False
    ) -> TrainResult:
        return run.train(cfg, resume=resume, overwrite=overwrite)

    def evaluate(
        self, cfg: ExperimentConfig, ckpt: str | Path | None, out_dir: str | Path | None = None
    ) -> dict[str, Any]:
        return run.evaluate(cfg, ckpt, out_dir)

    def pretrain_backbone(
        self, exp: ExperimentConfig, out_dir: Path, cfg: PretrainConfig, fresh: bool = False
    ) -> PretrainResult:
        return backbone_pretrain.pretrain_backbone(exp, out_dir, cfg, fresh=fresh)


def _run_stage(
    cfg: ExperimentConfig, fresh: bool, runner: StageRunner
) -> tuple[Path, Path, dict[str, Any]]:
    """Train (unless a finished run exists) and evaluate ``cfg`` -> (checkpoint, evaluation
    directory, metrics). A run whose ``last.ckpt`` stopped short of ``trainer.max_steps`` (cut
    off, or a budget made longer since) is continued from it (exact resume), not restarted."""
    run = RunDir.of(cfg)
    ckpt = run.last_checkpoint
    eval_dir = run.eval_dir("last")
    metrics_file = eval_dir / "metrics.json"
    if fresh or not ckpt.is_file():
        log.info("pipeline: training %s (%s)", cfg.name, cfg.stage)
        ckpt = runner.train(cfg, overwrite=True).last_ckpt  # fresh, or no finished run to reuse
        metrics_file.unlink(missing_ok=True)
    elif 0 <= (done := checkpoint_step(ckpt)) < cfg.trainer.max_steps:
        log.info(
            "pipeline: continuing %s from step %d to %d", cfg.name, done, cfg.trainer.max_steps
        )
        ckpt = runner.train(cfg, resume=ckpt).last_ckpt
        metrics_file.unlink(missing_ok=True)
    else:
        log.info("pipeline: reusing %s", ckpt)
    if metrics_file.is_file():
        return ckpt, eval_dir, json.loads(metrics_file.read_text())
    return ckpt, eval_dir, runner.evaluate(cfg, ckpt, eval_dir)


def run_pipeline(
    dataroot: str | Path | None,
    out_dir: str | Path,
    budget: str = "tiny",
    seed: int = 0,
    variants: Sequence[str] = ("labeldistill",),
    baseline: bool = True,
    fresh: bool = False,
    extra: Sequence[str] = (),
    teacher_dir: str | Path | None = None,
    teacher_seed: int | None = None,
    backbone: bool | None = None,
    teachers: bool = True,
    runner: StageRunner | None = None,
) -> PipelineResult:
    """Run stage 1, stage 2, stage 0 (if the budget has one), the baseline and the LabelDistill
    ``variants`` of ``budget``.

    Runs go to ``<out_dir>/runs`` (one directory per config name); ``dataroot`` None keeps the
    configs' own. ``extra`` overrides apply to every stage (e.g. ``data.num_workers=0``).
    ``teacher_dir`` / ``teacher_seed``: where and with which seed the two teacher stages run
    (default: ``out_dir`` and ``seed``); several pipelines can share one pair of teachers.
    ``backbone``: run stage 0 (a shared stage, beside the teachers); default: when a camera
    stage runs. ``baseline=False, variants=(), backbone=True`` runs the shared stages only;
    ``teachers=False`` (with no camera stage) skips the two teachers, so that stage 0 can train
    in one process while the teachers train in another. ``runner`` runs the stages (default
    :class:`LightningRunner`).
    """
    runner = runner if runner is not None else LightningRunner()
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget '{budget}': use one of {', '.join(BUDGETS)}")
    if not teachers and (baseline or variants):
        raise ConfigError("the camera stages need the teachers: teachers=False runs stage 0 only")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ConfigError(f"unknown variant '{bad[0]}': use some of {', '.join(VARIANTS)}")
    plan = BUDGETS[budget]
    out = Path(out_dir)
    runs = out / "runs"
    result = PipelineResult(out_dir=out)

    t_runs = Path(teacher_dir) / "runs" if teacher_dir is not None else runs
    t_seed = seed if teacher_seed is None else teacher_seed
    every = (*(plan.data.overrides() if plan.data is not None else ()), *extra)
    camera: tuple[str, ...] = ()  # overrides of the camera stages (stage 0's backbone)

    def stage(key: str, ckpts: Mapping[str, Path]) -> StageResult:
        teacher = key in ("lidar_teacher", "label_encoder")
        cfg = stage_config(
            plan,
            key,
            dataroot,
            t_runs if teacher else runs,
            t_seed if teacher else seed,
            ckpts,
            every if teacher else (*every, *camera),
        )
        ckpt, eval_dir, metrics = _run_stage(cfg, fresh, runner)
        row = StageResult(key, cfg.name, ckpt, metrics, eval_dir)
        result.rows.append(row)
        log.info("pipeline: %s mAP %.4f NDS %.4f", key, metrics["mAP"], metrics["NDS"])
        return row

    if teachers:
        lidar = stage("lidar_teacher", {})
        label = stage("label_encoder", {"lidar_ckpt": lidar.ckpt})
    if backbone is None:
        backbone = bool(baseline or variants)
    if plan.backbone is not None and backbone:
        cfg0 = stage_config(plan, "baseline", dataroot, t_runs, t_seed, {}, every)
        b = plan.backbone
        result.backbone = runner.pretrain_backbone(
            cfg0,
            t_runs / "backbone_pretrain",
            PretrainConfig(steps=b.steps, batch_size=b.batch_size, lr=b.lr, seed=t_seed),
            fresh=fresh,
        )
        camera = (
            "student.image_backbone.pretrained=true",
            f"student.image_backbone.pretrained_path={result.backbone.backbone}",
        )
    if baseline:
        stage("baseline", {})
    for v in variants:
        cfg_v = stage_config(plan, v, dataroot, runs, seed, {}, every)
        ckpts: dict[str, Path] = {}
        if cfg_v.distill.use_lidar_teacher:
            ckpts["lidar_ckpt"] = lidar.ckpt
        if cfg_v.distill.use_label_teacher:
            ckpts["label_ckpt"] = label.ckpt
        stage(v, ckpts)
    return result


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{float(v):.4f}"


METRIC_COLUMNS = ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE")


def format_table(rows: Sequence[StageResult]) -> str:
    """A markdown table: mAP, NDS, the five TP errors and mAP by distance band per row."""
    bands: list[str] = []
    for r in rows:
        for b in r.metrics.get("ap_by_distance") or {}:
            if b not in bands:
                bands.append(b)
    head = ["model", *METRIC_COLUMNS, *(f"mAP {b} m" for b in bands)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {k: i for i, k in enumerate(ROW_NAMES)}
    for r in sorted(rows, key=lambda r: order.get(r.key, len(order))):
        m = r.metrics
        by_band = m.get("ap_by_distance") or {}
        cells = [ROW_NAMES.get(r.key, r.key)]
        cells += [_fmt(m.get(c)) for c in METRIC_COLUMNS]
        cells += [_fmt(by_band.get(b)) for b in bands]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
