"""The stage module (training/stage_module.py) on the LabelDistill stages: teacher loading,
optimiser contents, loss terms and weights, the stage-2 upper bound on the synthetic set, and
the dataset-order gather."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from labeldistill.config import ExperimentConfig, load_config
from labeldistill.errors import CheckpointError
from labeldistill.models.build import build_lidar_teacher
from labeldistill.models.label_teacher import LabelTeacher
from labeldistill.models.labeldistill import LabelDistill
from labeldistill.training.datamodule import StageDataModule
from labeldistill.training.stage_module import StageModule, interleave

FAST = ["data.num_workers=0", "data.image_size=[64, 192]", "trainer.accelerator=cpu"]


def _cfg(name: str, *extra: str) -> ExperimentConfig:
    return load_config(name, [*FAST, *extra])


def _save_teacher(cfg: ExperimentConfig, path: Path, drop: str | None = None) -> dict:
    """A stage-1 style Lightning checkpoint of a random tiny teacher -> its state dict."""
    torch.manual_seed(1)
    teacher = build_lidar_teacher(cfg)
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    saved = {f"model.{k}": v for k, v in state.items() if k != drop}
    torch.save({"state_dict": saved}, path)
    return state


def test_stages_are_registered() -> None:
    assert isinstance(StageModule(_cfg("labeldistill_tiny")).model, LabelDistill)
    assert isinstance(StageModule(_cfg("labeldistill_step1_tiny")).model, LabelTeacher)


def test_missing_teacher_checkpoints_fail_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ckpt"
    module = StageModule(_cfg("labeldistill_tiny", f"distill.lidar_ckpt={missing}"))
    with pytest.raises(CheckpointError) as err:
        module.init_weights_for_training()
    msg = str(err.value)
    assert "\n" not in msg and str(missing) in msg and "stage 1" in msg
    # the label encoder file is checked before any work too
    teacher = tmp_path / "teacher.ckpt"
    _save_teacher(_cfg("labeldistill_tiny"), teacher)
    module = StageModule(
        _cfg("labeldistill_tiny", f"distill.lidar_ckpt={teacher}", "distill.label_ckpt=null")
    )
    with pytest.raises(CheckpointError, match=r"distill.label_ckpt is not set: .*stage 2"):
        module.init_weights_for_training()
    # an ablation without the label teacher does not need the file
    lidar_only = StageModule(_cfg("labeldistill_tiny_lidar_only", f"distill.lidar_ckpt={teacher}"))
    lidar_only.init_weights_for_training()
    assert lidar_only.model.label_encoder is None and lidar_only.needs_lidar
    assert not StageModule(_cfg("labeldistill_tiny_label_only")).needs_lidar


def test_label_encoder_stage_loads_the_teacher_strictly(tmp_path: Path) -> None:
    cfg = _cfg("labeldistill_step1_tiny")
    good, bad = tmp_path / "good.ckpt", tmp_path / "bad.ckpt"
    state = _save_teacher(cfg, good)
    _save_teacher(cfg, bad, drop="pts_neck.deblocks.0.0.weight")
    module = StageModule(_cfg("labeldistill_step1_tiny", f"distill.lidar_ckpt={good}"))
    module.init_weights_for_training()
    teacher = module.model.lidar_teacher
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    module.train()
    assert module.model.label_encoder.training and not teacher.training
    # only the label encoder is optimised, with the stage-2 hyper-parameters
    opt = module.configure_optimizers()["optimizer"]
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert params == {id(p) for p in module.model.label_encoder.parameters()}
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(1e-3, 1e-7)]
    # a checkpoint that does not fit fails and names the key
    module = StageModule(_cfg("labeldistill_step1_tiny", f"distill.lidar_ckpt={bad}"))
    with pytest.raises(CheckpointError, match="1 missing"):
        module.init_weights_for_training()


def test_labeldistill_param_groups_exclude_teachers() -> None:
    module = StageModule(_cfg("labeldistill_tiny"))
    opt = module.configure_optimizers()["optimizer"]
    groups = {g["name"]: g for g in opt.param_groups}
    names = {id(p): n for n, p in module.model.named_parameters()}
    backbone = {names[id(p)] for p in groups["backbone"]["params"]}
    other = {names[id(p)] for p in groups["other"]["params"]}
    assert groups["backbone"]["lr"] == pytest.approx(2e-3 * 0.5)
    assert groups["other"]["lr"] == pytest.approx(2e-3)
    assert backbone and all(n.startswith("student.backbone.") for n in backbone)
    assert any(n.startswith("distill_encoder_lidar.") for n in other)
    assert any(n.startswith("distill_encoder_label.") for n in other)
    assert any(n.startswith("student.head.") for n in other)
    assert not any(n.startswith(("lidar_teacher.", "label_encoder.")) for n in backbone | other)


def test_loss_terms_and_weights_come_from_the_config(synthetic_root: Path) -> None:
    base = [f"data.dataroot={synthetic_root}"]
    ones = [
        "distill.det_weight=1.0",
        "distill.depth_weight=1.0",
        "distill.lidar_feat_weight=1.0",
        "distill.label_feat_weight=1.0",
        "distill.response_weight=1.0",
    ]
    odd = [
        "distill.det_weight=0.7",
        "distill.depth_weight=2.5",
        "distill.lidar_feat_weight=0.3",
        "distill.label_feat_weight=0.45",
        "distill.response_weight=1.3",
    ]
    cfg1 = _cfg("labeldistill_tiny", *base, *ones)
    cfg2 = _cfg("labeldistill_tiny", *base, *odd)
    m1 = StageModule(cfg1)
    m2 = StageModule(cfg2)
    m2.model.load_state_dict(m1.model.state_dict())
    dm = StageDataModule(cfg1, needs_lidar=True, needs_depth=True)
    batch = next(iter(dm.train_dataloader()))
    m1.train()
    m2.train()
    t1 = m1.compute_losses(batch).terms
    t2 = m2.compute_losses(batch).terms
    weights = {
        "det_heatmap": 0.7,
        "det_bbox": 0.7,
        "depth": 2.5,
        "lidar_feat": 0.3,
        "label_feat": 0.45,
        "response": 1.3,
    }
    assert set(t1) == set(t2) == set(weights)
    for k, w in weights.items():
        assert t1[k].item() > 0
        assert t2[k].item() == pytest.approx(w * t1[k].item(), rel=1e-4), k
    # the detection terms are the student head's loss on the GT targets
    with torch.no_grad():
        out = m1.model.student(
            batch.imgs, batch.ego_from_camera, batch.intrinsics, batch.ida, batch.bda
        )
        det = m1.model.student.loss_detection(out, batch.gt_boxes, batch.gt_labels)
    assert t1["det_heatmap"].item() == pytest.approx(det["heatmap"].item(), rel=1e-4)
    # inference is the student alone: same detections as the bare student
    m1.eval()
    with torch.no_grad():
        dets = m1.detect(batch)
        ref = m1.model.student.decode(
            m1.model.student(
                batch.imgs, batch.ego_from_camera, batch.intrinsics, batch.ida, batch.bda
            )
        )
    assert all(torch.equal(a.boxes, b.boxes) for a, b in zip(dets, ref))


def test_tiny_configs_repeat_their_teacher_configs() -> None:
    ld = load_config("labeldistill_tiny")
    assert ld.lidar_teacher == load_config("centerpoint_tiny").lidar_teacher
    assert ld.label_encoder == load_config("labeldistill_step1_tiny").label_encoder
    assert ld.student == load_config("bevdepth_tiny").student
    assert ld.data.lidar_sweeps == load_config("centerpoint_tiny").data.lidar_sweeps
    paper = load_config("labeldistill_r50_128x128_e24_2key")
    assert (
        paper.lidar_teacher == load_config("centerpoint_vox01_128x128_20e_10sweeps").lidar_teacher
    )
    assert paper.label_encoder == load_config("labeldistill_step1").label_encoder
    assert paper.student == load_config("bevdepth_r50_256x704_128x128_e24_2key").student


def test_paper_config_values() -> None:
    from labeldistill.models.build import student_distill_channels, teacher_channels

    two = load_config("labeldistill_r50_128x128_e24_2key")
    four = load_config("labeldistill_r50_128x128_e24_4key")
    assert two.data.key_idxes == (-2, -4) and four.data.key_idxes == (-2, -4, -6, -8)
    assert student_distill_channels(two) == (450, 300)
    assert student_distill_channels(four) == (750, 300)
    assert teacher_channels(two) == (128, 256)
    d = two.distill
    assert (d.det_weight, d.depth_weight, d.lidar_feat_weight, d.label_feat_weight) == (
        1.0,
        3.0,
        0.3,
        0.3,
    )
    assert d.response_weight == 1.0 and d.partition == "thirds"
    o = two.optim
    assert (o.lr, o.weight_decay, o.backbone_lr_mult, o.milestones) == (4e-4, 1e-2, 0.5, (19, 23))
    assert two.trainer.max_epochs == 24 and four.trainer.max_epochs == 30 and two.trainer.ema
    step1 = load_config("labeldistill_step1")
    assert step1.stage == "label_encoder"
    assert (step1.optim.lr, step1.optim.weight_decay, step1.optim.milestones) == (
        1e-3,
        1e-7,
        (10, 11),
    )
    assert step1.trainer.max_epochs == 12 and step1.trainer.ema
    assert step1.lidar_teacher.head.code_weights == (1.0,) * 8 + (0.5, 0.5)
    abl = {
        n: load_config(f"labeldistill_tiny_{n}").distill
        for n in ("lidar_only", "label_only", "no_partition")
    }
    assert not abl["lidar_only"].use_label_teacher and abl["lidar_only"].use_lidar_teacher
    assert not abl["label_only"].use_lidar_teacher and abl["label_only"].use_label_teacher
    assert abl["no_partition"].partition == "none"


# Stage 2 on a 32 x 32 grid (3.2 m cells) to keep the test affordable on 2 CPU cores.
SMALL_GRID = [
    "data.image_size=[32, 96]",
    "grid.x_bound=[-51.2, 51.2, 3.2]",
    "grid.y_bound=[-51.2, 51.2, 3.2]",
    "lidar_teacher.voxel_size=[0.4, 0.4, 0.4]",
    "optim.lr=3.0e-3",
]
LE_STEPS = 100
#: Official mAP of the GT decoded back through the frozen teacher after LE_STEPS steps (batch 8)
#: on the 32 samples of mini_train, evaluated on the same samples. Measured (seed 0): 0.18 after
#: 60 steps, 0.37 after 100, 0.42 after 120; the bar 0.2 leaves room for numeric drift. A
#: broken stage 2 (no gradient through the frozen decoder, wrong targets, label maps off the
#: grid) stays near 0. The label maps carry each box's exact position, size, yaw and class, so
#: the bound keeps rising with training (the demo / benchmark runs report the full value).
LE_MIN_MAP = 0.2


@pytest.mark.slow
def test_label_encoder_decodes_the_gt_through_the_frozen_teacher(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """The stage-2 module learns, through a frozen (random-init, eval-mode) tiny teacher, to
    decode the GT of mini_train with an official mAP above LE_MIN_MAP; the teacher is
    unchanged. (The decoder being untrained makes the task harder, not easier: the encoder
    must drive a fixed random neck + head.)"""
    from labeldistill.data.dataset import build_dataset, collate
    from labeldistill.evaluation.nuscenes_eval import evaluate_detections

    cfg = _cfg("labeldistill_step1_tiny", f"data.dataroot={synthetic_root}", *SMALL_GRID)
    torch.manual_seed(0)
    module = StageModule(cfg)
    teacher_before = {k: v.clone() for k, v in module.model.lidar_teacher.state_dict().items()}
    ds = build_dataset(cfg.data, "mini_train", train=False)
    batches = [
        collate([ds[i] for i in range(j, min(j + 8, len(ds)))]) for j in range(0, len(ds), 8)
    ]
    opt = module.configure_optimizers()["optimizer"]

    def decode_map(out_dir: Path) -> float:
        module.eval()
        with torch.no_grad():
            dets = [d for b in batches for d in module.detect(b)]
        metas = [m for b in batches for m in b.metas]
        metrics = evaluate_detections(
            dets, metas, synthetic_root, "v1.0-mini", "mini_train", out_dir
        )
        return float(metrics["mAP"])

    module.train()
    first = None
    for step in range(LE_STEPS):
        losses = module.compute_losses(batches[step % len(batches)])
        first = losses.total.item() if first is None else first
        opt.zero_grad()
        losses.total.backward()
        opt.step()
    assert losses.total.item() < 0.5 * first
    mAP = decode_map(tmp_path / "trained")
    print(f"stage-2 decode mAP on mini_train after {LE_STEPS} steps: {mAP:.4f}")
    assert mAP > LE_MIN_MAP
    for k, v in module.model.lidar_teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k


def test_interleave_restores_dataset_order_and_drops_padding() -> None:
    # 5 items on 2 ranks: rank 0 gets 0, 2, 4; rank 1 gets 1, 3 and the padding item 0
    assert interleave([[0, 2, 4], [1, 3, 0]], 5) == [0, 1, 2, 3, 4]
    assert interleave([[0, 3], [1, 4], [2, 0]], 5) == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError):
        interleave([[0, 2], [1]], 3)
