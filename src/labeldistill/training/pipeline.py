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
from typing import Any

from labeldistill.config import ExperimentConfig, load_config
from labeldistill.errors import ConfigError

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
}
VARIANTS = ("labeldistill", "lidar_only", "label_only", "no_partition")


@dataclass(frozen=True)
class StagePlan:
    """One stage of a budget: its config name and overrides (training length etc.)."""

    config: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackbonePlan:
    """Stage 0 of a budget (optional, ours): the camera students' ResNet pretrained on the
    per-pixel classes of the synthetic renders (``labeldistill pretrain-backbone``), trained
    once beside the teachers and loaded by every camera stage, baseline and variants alike."""

    steps: int
    batch_size: int = 8
    lr: float = 2.0e-3


@dataclass(frozen=True)
class DataPlan:
    """The synthetic set a budget is measured on (``benchmarks/accuracy.py``, the demo):
    ``labeldistill synth`` options; ``data_seed`` and ``samples_per_scene`` are the
    benchmark's defaults (it takes both on its command line)."""

    version: str = "v1.0-mini"
    train_scenes: int = 8
    val_scenes: int = 2
    samples_per_scene: int = 10
    image_size: tuple[int, int] = (352, 198)  # W, H
    segmentation: bool = False
    data_seed: int = 0

    @property
    def splits(self) -> tuple[str, str]:
        """(train split, val split) of the version."""
        return ("mini_train", "mini_val") if self.version == "v1.0-mini" else ("train", "val")

    def overrides(self) -> tuple[str, ...]:
        """Config overrides that point a stage at this set's version and splits."""
        train, val = self.splits
        return (
            f"data.version={self.version}",
            f"data.train_split={train}",
            f"data.val_split={val}",
        )


@dataclass(frozen=True)
class Budget:
    """Configs and training lengths of every stage (see :data:`BUDGETS`)."""

    name: str
    stages: Mapping[str, StagePlan]
    description: str = ""
    backbone: BackbonePlan | None = None
    data: DataPlan | None = None  # None: the configs' own version and splits


def _short(steps: int, ema_decay: float, *extra: str) -> tuple[str, ...]:
    """Overrides of a short CPU run: ``steps`` optimiser steps, no lr step inside the run, an
    EMA whose horizon (1 / (1 - decay) steps) is short against the run."""
    return (
        f"trainer.max_steps={steps}",
        "trainer.max_epochs=1000",
        "optim.milestones=[1000]",
        f"trainer.ema_decay={ema_decay}",
        *extra,
    )


#: The LiDAR input of the CPU budgets: the key scan only (no sweeps). The torch sparse-conv
#: backend dominates the cost of a teacher step on CPU and scales with the number of voxels;
#: the teacher and every stage that runs it read the same input.
_CPU_LIDAR = ("data.lidar_sweeps=0",)


#: The camera students of the CPU budgets see the key frame only (F = 1): the image backbone
#: dominates a student step, and on 2 cores more steps teach the student more than a second
#: frame does. Baseline and every LabelDistill variant get the same setting.
_CPU_STUDENT = ("data.key_idxes=[]",)


def _cpu_budget(
    name: str,
    teacher: int,
    label: int,
    student: int,
    decay: float,
    description: str,
    student_decay: float | None = None,
    backbone: BackbonePlan | None = None,
    data: DataPlan | None = None,
    student_extra: tuple[str, ...] = (),
) -> Budget:
    """A budget of the tiny configs on the synthetic set: steps per stage and the EMA decay
    (``student_decay``: the camera students' own, default ``decay``); ``student_extra``:
    overrides shared by every camera student (baseline and variants alike)."""
    lidar = _CPU_LIDAR
    cam = _CPU_STUDENT + student_extra
    students = {
        "baseline": ("bevdepth_tiny", cam),
        "labeldistill": ("labeldistill_tiny", cam + lidar),
        "lidar_only": ("labeldistill_tiny_lidar_only", cam + lidar),
        "label_only": ("labeldistill_tiny_label_only", cam),
        "no_partition": ("labeldistill_tiny_no_partition", cam + lidar),
    }
    plans = {
        "lidar_teacher": StagePlan("centerpoint_tiny", _short(teacher, decay, *lidar)),
        "label_encoder": StagePlan("labeldistill_step1_tiny", _short(label, decay)),
    }
    cam_decay = decay if student_decay is None else student_decay
    for key, (config, extra) in students.items():
        plans[key] = StagePlan(config, _short(student, cam_decay, *extra))
    data = data if data is not None else DataPlan()
    where = "synthetic v1.0-mini" if data.version == "v1.0-mini" else "synthetic v1.0-trainval"
    return Budget(name, plans, f"{description} ({where})", backbone=backbone, data=data)


#: The accuracy benchmark's synthetic set (benchmarks/accuracy.py): a v1.0-trainval tree of
#: 32 official train and 8 official val scene names, 12 key samples each (384 train / 96 val
#: samples), 352x198 cameras, with the per-pixel class maps of stage 0.
BENCH_DATA = DataPlan(
    version="v1.0-trainval",
    train_scenes=32,
    val_scenes=8,
    samples_per_scene=12,
    image_size=(352, 198),
    segmentation=True,
)
#: Camera students of the accuracy benchmark: 8 epochs of 192 steps (batch 2 on 384 samples),
#: validated after every epoch (the learning curves), lr x 0.1 after epochs 6 and 7: the
#: paper's two steps (epochs 19 and 23 of 24) at the same fractions of the run.
BENCH_STUDENT_STEPS = 1536
#: Stage 0 of the accuracy benchmark: 2400 steps of batch 8 (about 8 passes over the 2304
#: training images: 384 samples x 6 cameras); at 600 steps its val mIoU over object classes
#: was 0.07 and the frozen students on it plateaued at baseline mAP 0.026 (RESULTS.md).
BENCH_STAGE0_STEPS = 2400
_BENCH_STUDENT = ("trainer.check_val_every_n_epoch=1", "optim.milestones=[6,7]")
#: The demo's set: the 10 v1.0-mini scenes, 10 samples each, with class maps.
DEMO_DATA = DataPlan(samples_per_scene=10, segmentation=True)

#: ``tiny``: the `make demo` budget on the synthetic v1.0-mini set (80 training samples, batch
#: 2): stage 0 150 steps, LiDAR teacher 100 steps, label encoder 100, baseline and every
#: LabelDistill variant 120 each from the stage-0 backbone.
#: ``bench``: the accuracy benchmark's budget (benchmarks/accuracy.py, on :data:`BENCH_DATA`):
#: stage 0 :data:`BENCH_STAGE0_STEPS`, LiDAR teacher 600, label encoder 300, every camera student
#: :data:`BENCH_STUDENT_STEPS` on the stage-0 ResNet, frozen (no backward through it: 1.6x the
#: steps per CPU-minute).
#: ``bench_scratch``: ``bench`` with random-init camera students (no stage 0, nothing frozen),
#: the reference that shows what stage 0 buys.
#: ``paper``: the paper configs unchanged (GPU-sized).
BUDGETS: dict[str, Budget] = {
    "tiny": _cpu_budget(
        "tiny",
        100,
        100,
        120,
        0.9,
        "CPU demo: stage 0 150 steps, teacher 100, label encoder 100, students 120",
        backbone=BackbonePlan(150),
        data=DEMO_DATA,
    ),
    "bench": _cpu_budget(
        "bench",
        600,
        300,
        BENCH_STUDENT_STEPS,
        0.97,
        "accuracy benchmark: stage 0 2400 steps, teacher 600, label encoder 300, students"
        f" {BENCH_STUDENT_STEPS} on the frozen stage-0 backbone",
        student_decay=0.99,
        backbone=BackbonePlan(BENCH_STAGE0_STEPS),
        data=BENCH_DATA,
        student_extra=(
            *_BENCH_STUDENT,
            # the whole ResNet frozen after stage 0: no backward through it, 1.6x the steps
            "student.image_backbone.frozen_stages=4",
        ),
    ),
    "bench_scratch": _cpu_budget(
        "bench_scratch",
        600,
        300,
        BENCH_STUDENT_STEPS,
        0.97,
        "accuracy benchmark, random-init students (nothing frozen): teacher 600, label encoder"
        f" 300, students {BENCH_STUDENT_STEPS}",
        student_decay=0.99,
        data=BENCH_DATA,
        student_extra=_BENCH_STUDENT,
    ),
    "paper": Budget(
        "paper",
        {
            "lidar_teacher": StagePlan("centerpoint_vox01_128x128_20e_10sweeps"),
            "label_encoder": StagePlan("labeldistill_step1"),
            "baseline": StagePlan("bevdepth_r50_256x704_128x128_e24_2key"),
            "labeldistill": StagePlan("labeldistill_r50_128x128_e24_2key"),
            "lidar_only": StagePlan("labeldistill_r50_128x128_e24_2key_lidar_only"),
            "label_only": StagePlan("labeldistill_r50_128x128_e24_2key_label_only"),
            "no_partition": StagePlan("labeldistill_r50_128x128_e24_2key_no_partition"),
        },
        "the paper configs (2key), full length",
    ),
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


def _run_stage(cfg: ExperimentConfig, fresh: bool) -> tuple[Path, Path, dict[str, Any]]:
    """Train (unless a finished run exists) and evaluate ``cfg`` -> (checkpoint, evaluation
    directory, metrics). A run whose ``last.ckpt`` stopped short of ``trainer.max_steps`` (cut
    off, or a budget made longer since) is continued from it (exact resume), not restarted."""
    from labeldistill.checkpoint.weights import checkpoint_step
    from labeldistill.training.run import evaluate, train
    from labeldistill.training.run_dir import RunDir

    run = RunDir.of(cfg)
    ckpt = run.last_checkpoint
    eval_dir = run.eval_dir("last")
    metrics_file = eval_dir / "metrics.json"
    if fresh or not ckpt.is_file():
        log.info("pipeline: training %s (%s)", cfg.name, cfg.stage)
        ckpt = train(cfg, overwrite=True).last_ckpt  # fresh, or no finished run to reuse
        metrics_file.unlink(missing_ok=True)
    elif 0 <= (done := checkpoint_step(ckpt)) < cfg.trainer.max_steps:
        log.info(
            "pipeline: continuing %s from step %d to %d", cfg.name, done, cfg.trainer.max_steps
        )
        ckpt = train(cfg, resume=ckpt).last_ckpt
        metrics_file.unlink(missing_ok=True)
    else:
        log.info("pipeline: reusing %s", ckpt)
    if metrics_file.is_file():
        return ckpt, eval_dir, json.loads(metrics_file.read_text())
    return ckpt, eval_dir, evaluate(cfg, ckpt, eval_dir)


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
    in one process while the teachers train in another.
    """
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
        ckpt, eval_dir, metrics = _run_stage(cfg, fresh)
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
        from labeldistill.training import backbone_pretrain

        cfg0 = stage_config(plan, "baseline", dataroot, t_runs, t_seed, {}, every)
        b = plan.backbone
        result.backbone = backbone_pretrain.pretrain_backbone(
            cfg0,
            t_runs / "backbone_pretrain",
            backbone_pretrain.PretrainConfig(
                steps=b.steps, batch_size=b.batch_size, lr=b.lr, seed=t_seed
            ),
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


@dataclass
class DemoResult:
    """What the demo wrote: the dataset, the GT sanity metrics, the pipeline rows, the
    prediction pictures and the scene GIFs (LiDAR teacher, LabelDistill)."""

    dataroot: Path
    gt_metrics: dict[str, Any]
    pipeline: PipelineResult
    pictures: list[Path]
    scene_gifs: list[Path] = field(default_factory=list)


DEMO_VERSION = "v1.0-mini"
DEMO_SPLIT = "mini_val"


def ensure_synthetic(
    root: str | Path,
    plan: DataPlan,
    seed: int | None = None,
    samples_per_scene: int | None = None,
    workers: int | None = None,
) -> Path:
    """Generate and prepare the synthetic set of ``plan`` at ``root`` unless its val info file
    exists (an existing set is reused as it is). ``seed`` / ``samples_per_scene`` override the
    plan's defaults. Returns ``root``."""
    from labeldistill.data.infos import info_path
    from labeldistill.data.prepare import prepare
    from labeldistill.data.synthetic import SynthConfig, generate

    root = Path(root)
    if not info_path(root, plan.splits[1]).is_file():
        cfg = SynthConfig(
            seed=plan.data_seed if seed is None else seed,
            samples_per_scene=plan.samples_per_scene
            if samples_per_scene is None
            else samples_per_scene,
            image_width=plan.image_size[0],
            image_height=plan.image_size[1],
            segmentation=plan.segmentation,
            version=plan.version,
            train_scenes=plan.train_scenes,
            val_scenes=plan.val_scenes,
        )
        generate(root, cfg, workers=workers, overwrite=True)
        prepare(root, plan.version, workers=workers)
    return root


def run_demo(
    out_dir: str | Path,
    samples_per_scene: int = 10,
    budget: str = "tiny",
    seed: int = 0,
    workers: int | None = None,
    fresh: bool = False,
) -> DemoResult:
    """The whole tiny demo: synthetic set -> prepare -> GT pictures and GT-as-predictions
    evaluation (mAP ~ 1 sanity check) -> :func:`run_pipeline` -> pictures of LabelDistill's
    predictions and animated GIFs of the first val scene (six cameras + BEV, GT and the
    predictions of the LiDAR teacher / of LabelDistill over time). Everything lives below
    ``out_dir``; an existing dataset is reused."""
    from labeldistill.evaluation.nuscenes_eval import evaluate_json, gt_as_results, write_results
    from labeldistill.evaluation.scene_video import visualize_scene
    from labeldistill.evaluation.visualize import visualize

    out = Path(out_dir)
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget '{budget}': use one of {', '.join(BUDGETS)}")
    plan = BUDGETS[budget].data or DEMO_DATA
    version, split = plan.version, plan.splits[1]
    data = ensure_synthetic(out / "data", plan, seed, samples_per_scene, workers)
    visualize(data, version, split, out / "pictures" / "gt", num=2)
    gt_dir = out / "eval_gt_as_results"
    gt_file = write_results(gt_dir / "results_gt.json", gt_as_results(data, version, split))
    gt_metrics = evaluate_json(data, version, split, gt_file, gt_dir)
    result = run_pipeline(data, out, budget=budget, seed=seed, fresh=fresh)
    predictions = {
        key: row.eval_dir / "results_nusc.json"
        for key, row in result.by_key().items()
        if key in ("lidar_teacher", "labeldistill") and row.eval_dir is not None
    }
    predictions = {k: p for k, p in predictions.items() if p.is_file()}
    pictures: list[Path] = []
    if "labeldistill" in predictions:
        pictures = visualize(
            data,
            version,
            split,
            out / "pictures" / "labeldistill",
            results_path=predictions["labeldistill"],
            num=2,
        )
    scene = first_scene(data, split)
    gifs = [
        visualize_scene(
            data,
            version,
            split,
            scene,
            out / "pictures" / f"scene_{key}.gif",
            results_path=path,
        )
        for key, path in predictions.items()
    ]
    return DemoResult(data, gt_metrics, result, pictures, gifs)


def first_scene(dataroot: str | Path, split: str) -> str:
    """Token of the scene of the first key sample of ``split`` (info file order)."""
    from labeldistill.data.infos import info_path, load_infos

    return str(load_infos(info_path(Path(dataroot), split))[0]["scene_token"])
