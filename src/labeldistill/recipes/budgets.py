"""Budgets: the configs and training lengths of every pipeline stage, and the synthetic sets
they are measured on (the demo's, the accuracy benchmark's :data:`BENCH_DATA`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: The LabelDistill variants a pipeline can train beside the baseline: the method, its three
#: ablations, and (CPU budgets) the method with the LiDAR slice of S0 detached
#: (``distill.lidar_level0_grad=false``: the 2key gradient topology at F = 1), and with both
#: S0 slices detached (``level0_detached``: the level-0 feature losses train their adaptors only).
VARIANTS = (
    "labeldistill",
    "lidar_only",
    "label_only",
    "no_partition",
    "lidar_s0_detached",
    "level0_detached",
)


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
#: frame does. They train with NHWC convolutions and, on a CPU with native bf16, in bf16 mixed
#: precision (``trainer.precision=fast``; the CPU analogue of the paper's fp16 mixed precision
#: on GPU): 2.2x the steps per CPU-second of float32 NCHW on an AMX CPU at the same accuracy
#: (benchmarks/bench_cpu_precision.py, RESULTS.md). Baseline and every LabelDistill variant get
#: the same settings.
_CPU_STUDENT = (
    "data.key_idxes=[]",
    "trainer.precision=fast",
    "trainer.channels_last=true",
)


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
        "lidar_s0_detached": (
            "labeldistill_tiny",
            (
                *cam,
                *lidar,
                "name=labeldistill_tiny_lidar_s0_detached",
                "distill.lidar_level0_grad=false",
            ),
        ),
        "level0_detached": (
            "labeldistill_tiny",
            (
                *cam,
                *lidar,
                "name=labeldistill_tiny_level0_detached",
                "distill.lidar_level0_grad=false",
                "distill.label_level0_grad=false",
            ),
        ),
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
#: Camera students of the accuracy benchmark: 16 epochs of 192 steps (batch 2 on 384 samples),
#: validated after every second epoch (the learning curves), lr x 0.1 after epochs 12 and 14
#: (the paper's two steps, epochs 19 and 23 of 24, near the same fractions of the run). At 1536
#: steps the baseline plateaued at mAP 0.03; at 3072 it reached 0.050 (seed 100, RESULTS.md).
BENCH_STUDENT_STEPS = 3072
#: Stage 0 of the accuracy benchmark: 2400 steps of batch 8 (about 8 passes over the 2304
#: training images: 384 samples x 6 cameras); at 600 steps its val mIoU over object classes
#: was 0.07 and the frozen students on it plateaued at baseline mAP 0.026 (RESULTS.md).
BENCH_STAGE0_STEPS = 2400
#: Image features at stride 8 (16 x 44 cells of the 128 x 352 input, the feature grid of the
#: paper's 256 x 704 input at stride 16: the depth distribution and the lift are twice as fine
#: as at stride 16; +0.002-0.005 mAP at every epoch for 1.2x the time per step, RESULTS.md).
#: Shared by the camera students of the demo and of the benchmark.
_STRIDE_8 = (
    "student.view_transform.downsample=8",
    "student.image_neck.upsample_strides=[0.5,1.0,2.0,4.0]",
)
#: The whole ResNet frozen after stage 0: no backward through it, 1.6x the steps per
#: CPU-minute (a frozen random ResNet would be useless: only budgets with stage 0 use it).
_FROZEN_RESNET = ("student.image_backbone.frozen_stages=4",)
#: Shared by every camera student of the benchmark: validation every second epoch (the learning
#: curves), the lr steps, stride 8.
_BENCH_STUDENT = (
    "trainer.check_val_every_n_epoch=2",
    "optim.milestones=[12,14]",
    *_STRIDE_8,
)
#: Camera students of the demo: 450 steps (11 epochs of 40 on the 80 training samples), lr x 0.1
#: after epochs 8 and 10 (near the paper's fractions of the run), EMA 0.97, stride 8, on the
#: frozen stage-0 ResNet: the benchmark's regime, shortened. At 120 steps from random init the
#: demo's LabelDistill row was mAP 0.0000 (RESULTS.md, Demo).
DEMO_STUDENT_STEPS = 450
_DEMO_STUDENT = ("optim.milestones=[8,10]", *_STRIDE_8, *_FROZEN_RESNET)
#: The demo's set: the 10 v1.0-mini scenes, 10 samples each, with class maps.
DEMO_DATA = DataPlan(samples_per_scene=10, segmentation=True)

#: ``tiny``: the `make demo` budget on the synthetic v1.0-mini set (80 training samples, batch
#: 2): stage 0 150 steps, LiDAR teacher 100 steps, label encoder 100, baseline and every
#: LabelDistill variant :data:`DEMO_STUDENT_STEPS` each on the frozen stage-0 ResNet.
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
        DEMO_STUDENT_STEPS,
        0.9,
        "CPU demo: stage 0 150 steps, teacher 100, label encoder 100, students"
        f" {DEMO_STUDENT_STEPS} on the frozen stage-0 backbone",
        student_decay=0.97,
        backbone=BackbonePlan(150),
        data=DEMO_DATA,
        student_extra=_DEMO_STUDENT,
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
        student_extra=(*_BENCH_STUDENT, *_FROZEN_RESNET),
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
