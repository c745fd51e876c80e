"""Gradient flow of the LabelDistill student step (METHOD.md 7, 8; issue 5 "Done when").

Tiny real modules (the labeldistill_tiny student at 64 x 192 input with two key frames, the
centerpoint_tiny teacher, the tiny label encoder) on one real synthetic sample.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from labeldistill.config import DistillConfig, ExperimentConfig, load_config
from labeldistill.data.dataset import build_dataset, collate
from labeldistill.models.build import build_labeldistill
from labeldistill.models.distill import heatmap_weights, partition_slices, weighted_feature_loss
from labeldistill.models.label_encoder import rasterize_labels
from labeldistill.models.labeldistill import LabelDistill
from labeldistill.structures import Batch, DistillOutput, Targets

FAST = ["data.num_workers=0", "data.image_size=[64, 192]", "trainer.accelerator=cpu"]


def _cfg(root: Path, *extra: str) -> ExperimentConfig:
    return load_config("labeldistill_tiny", [f"data.dataroot={root}", *FAST, *extra])


def _batch(cfg: ExperimentConfig) -> Batch:
    data_cfg = cfg.data.__class__(**{**cfg.data.__dict__, "return_lidar": True})
    ds = build_dataset(data_cfg, cfg.data.train_split, train=True, seed=0)
    return collate([ds[0]])


def _forward(
    model: LabelDistill, cfg: ExperimentConfig, batch: Batch
) -> tuple[DistillOutput, Targets]:
    head = model.student.head
    targets = head.get_targets(batch.gt_boxes, batch.gt_labels)
    maps = rasterize_labels(batch.gt_boxes, batch.gt_labels, cfg.grid)
    out = model.forward_train(
        batch.imgs,
        batch.ego_from_camera,
        batch.intrinsics,
        batch.ida,
        batch.bda,
        lidar_points=batch.lidar_points,
        label_maps=maps,
    )
    return out, targets


@pytest.fixture(scope="module")
def setup(synthetic_root: Path):
    torch.manual_seed(0)
    cfg = _cfg(synthetic_root)
    model = build_labeldistill(cfg)
    batch = _batch(cfg)
    assert batch.gt_boxes[0].shape[0] > 0, "the sample needs objects"
    return cfg, model, batch


def test_student_step_leaves_teachers_untouched(setup) -> None:
    cfg, model, batch = setup
    model = copy.deepcopy(model)
    model.train()
    teachers = {"lidar": model.lidar_teacher, "label": model.label_encoder}
    for t in teachers.values():
        assert not t.training and all(not m.training for m in t.modules())
    before = {k: copy.deepcopy(t.state_dict()) for k, t in teachers.items()}
    out, targets = _forward(model, cfg, batch)
    head = model.student.head
    loss = sum(head.loss(out.student.head, targets).values())
    loss = loss + 3.0 * model.student.loss_depth(out.student, batch.depth)
    loss = loss + sum(model.distill_losses(out, targets, head.cfg.code_weights).values())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss.backward()
    opt.step()
    for name, t in teachers.items():
        assert all(p.grad is None and not p.requires_grad for p in t.parameters()), name
        after = t.state_dict()
        for k, v in before[name].items():  # weights and BN running statistics
            assert torch.equal(v, after[k]), f"{name} teacher entry {k} changed"
    # the student did learn
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.student.parameters())
    # teachers stay in eval whatever .train() calls happen
    model.train(True)
    assert not model.lidar_teacher.training and not model.label_encoder.training
    assert model.student.training and model.distill_encoder_lidar.training


def test_free_third_gets_no_distillation_gradient_and_adaptors_do(setup) -> None:
    """The feature losses read only the label and LiDAR thirds of each level: the gradient of
    the level-0 losses w.r.t. S0 and of all feature losses w.r.t. S1 is zero on the free third.
    (The level-1 losses do reach every S0 channel through the trunk stem and layer 1, and the
    response loss reaches everything through the head, exactly as in the published code.)"""
    cfg, model, batch = setup
    model = copy.deepcopy(model)
    model.train()
    out, targets = _forward(model, cfg, batch)
    s0, s1 = out.student.distill_feats
    soft0, soft1 = heatmap_weights(targets, binary=False)
    bin0, bin1 = heatmap_weights(targets, binary=True)
    level0 = weighted_feature_loss(out.lidar.feats[0], out.lidar_adapted[0], soft0)
    level0 = level0 + weighted_feature_loss(out.label_feats[0], out.label_adapted[0], bin0)
    level1 = weighted_feature_loss(out.lidar.feats[1], out.lidar_adapted[1], soft1)
    level1 = level1 + weighted_feature_loss(out.label_feats[1], out.label_adapted[1], bin1)
    (g0,) = torch.autograd.grad(level0, [s0], retain_graph=True)
    (g1,) = torch.autograd.grad(level0 + level1, [s1], retain_graph=True)
    for g, c in ((g0, s0.shape[1]), (g1, s1.shape[1])):
        label_sl, lidar_sl = partition_slices(c, "thirds")
        assert lidar_sl.stop == 2 * (c // 3)
        assert torch.count_nonzero(g[:, lidar_sl.stop :]) == 0  # the free part
        assert g[:, label_sl].abs().sum() > 0 and g[:, lidar_sl].abs().sum() > 0
    # the per-level sums are the module's weighted terms
    distill = model.distill_losses(out, targets, model.student.head.cfg.code_weights)
    lidar_total = weighted_feature_loss(out.lidar.feats[0], out.lidar_adapted[0], soft0)
    lidar_total = lidar_total + weighted_feature_loss(
        out.lidar.feats[1], out.lidar_adapted[1], soft1
    )
    assert distill["lidar_feat"].item() == pytest.approx(0.3 * lidar_total.item(), rel=1e-5)
    assert (distill["lidar_feat"] + distill["label_feat"]).item() == pytest.approx(
        0.3 * (level0 + level1).item(), rel=1e-5
    )
    # the response loss acts on the head outputs only: no gradient into the adaptors
    adaptors = list(model.distill_encoder_lidar.parameters()) + list(
        model.distill_encoder_label.parameters()
    )
    grads = torch.autograd.grad(distill["response"], adaptors, allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
    # both adaptors get gradients from their feature losses (every parameter)
    model.zero_grad()
    (distill["lidar_feat"] + distill["label_feat"]).backward()
    for name in ("distill_encoder_lidar", "distill_encoder_label"):
        for pname, p in getattr(model, name).named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname}"


def test_lidar_level0_grad_off_detaches_the_lidar_slice_of_s0_only(
    setup, synthetic_root: Path
) -> None:
    """``distill.lidar_level0_grad=false`` (the 2key gradient topology at any F): same loss
    values; the level-0 LiDAR loss no longer reaches S0 but still trains its adaptor; the
    label slice and the level-1 LiDAR loss are untouched."""
    cfg0, model0, batch = setup
    cfg = _cfg(synthetic_root, "distill.lidar_level0_grad=false")
    model = build_labeldistill(cfg)
    model.load_state_dict(model0.state_dict())
    model.train()
    model0 = copy.deepcopy(model0)
    model0.train()
    grads = {}
    for name, m in (("on", model0), ("off", model)):
        torch.manual_seed(0)
        out, targets = _forward(m, cfg, batch)
        s0, s1 = out.student.distill_feats
        soft0, soft1 = heatmap_weights(targets, binary=False)
        bin0, _ = heatmap_weights(targets, binary=True)
        lidar0 = weighted_feature_loss(out.lidar.feats[0], out.lidar_adapted[0], soft0)
        lidar1 = weighted_feature_loss(out.lidar.feats[1], out.lidar_adapted[1], soft1)
        label0 = weighted_feature_loss(out.label_feats[0], out.label_adapted[0], bin0)
        (g_lidar0,) = torch.autograd.grad(lidar0, [s0], retain_graph=True, allow_unused=True)
        (g_label0,) = torch.autograd.grad(label0, [s0], retain_graph=True)
        (g_lidar1,) = torch.autograd.grad(lidar1, [s1], retain_graph=True)
        adaptor0 = list(m.distill_encoder_lidar.blocks[0].parameters())
        g_adaptor = torch.autograd.grad(lidar0, adaptor0)
        grads[name] = (lidar0.item(), g_lidar0, g_label0, g_lidar1, g_adaptor)
    on, off = grads["on"], grads["off"]
    assert off[0] == pytest.approx(on[0], rel=1e-6)  # the loss value does not change
    assert on[1] is not None and on[1].abs().sum() > 0  # F = 2 here: the slice spans frame t
    assert off[1] is None or torch.count_nonzero(off[1]) == 0
    torch.testing.assert_close(off[2], on[2])  # label slice: unchanged
    torch.testing.assert_close(off[3], on[3])  # level 1: unchanged
    for a, b in zip(off[4], on[4]):  # the adaptor learns as before
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b)


def test_both_level0_grads_off_keep_every_level0_loss_out_of_s0(
    setup, synthetic_root: Path
) -> None:
    """``label_level0_grad=false`` with ``lidar_level0_grad=false``: no level-0 feature loss
    reaches S0 (the image network), both adaptors still learn from them, level 1 unchanged."""
    cfg0, model0, batch = setup
    cfg = _cfg(synthetic_root, "distill.lidar_level0_grad=false", "distill.label_level0_grad=false")
    model = build_labeldistill(cfg)
    model.load_state_dict(model0.state_dict())
    model.train()
    model0 = copy.deepcopy(model0)
    model0.train()
    seen = {}
    for name, m in (("on", model0), ("off", model)):
        torch.manual_seed(0)
        out, targets = _forward(m, cfg, batch)
        s0, s1 = out.student.distill_feats
        bin0, bin1 = heatmap_weights(targets, binary=True)
        label0 = weighted_feature_loss(out.label_feats[0], out.label_adapted[0], bin0)
        label1 = weighted_feature_loss(out.label_feats[1], out.label_adapted[1], bin1)
        (g_s0,) = torch.autograd.grad(label0, [s0], retain_graph=True, allow_unused=True)
        (g_s1,) = torch.autograd.grad(label1, [s1], retain_graph=True)
        adaptor0 = list(m.distill_encoder_label.blocks[0].parameters())
        seen[name] = (label0.item(), g_s0, g_s1, torch.autograd.grad(label0, adaptor0))
    on, off = seen["on"], seen["off"]
    assert off[0] == pytest.approx(on[0], rel=1e-6)
    assert on[1] is not None and on[1].abs().sum() > 0
    assert off[1] is None or torch.count_nonzero(off[1]) == 0
    torch.testing.assert_close(off[2], on[2])
    for a, b in zip(off[3], on[3]):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b)


def test_no_partition_sends_every_channel_to_both_adaptors(setup, synthetic_root: Path) -> None:
    cfg0, _, batch = setup
    cfg = _cfg(synthetic_root, "distill.partition=none")
    model = build_labeldistill(cfg)
    assert model.distill_encoder_lidar.blocks[0][0].in_channels == 64  # F * C = 2 * 32
    model.train()
    out, targets = _forward(model, cfg, batch)
    s0, _ = out.student.distill_feats
    distill = model.distill_losses(out, targets, model.student.head.cfg.code_weights)
    (g_label,) = torch.autograd.grad(distill["label_feat"], [s0], retain_graph=True)
    (g_lidar,) = torch.autograd.grad(distill["lidar_feat"], [s0])
    per_channel = lambda g: g.abs().sum(dim=(0, 2, 3))  # noqa: E731
    assert bool((per_channel(g_label) > 0).all()) and bool((per_channel(g_lidar) > 0).all())


# ---------------------------------------------------------------------------------------------
# Hand-computed loss terms through LabelDistill.distill_losses (weights from the config)
# ---------------------------------------------------------------------------------------------


def _targets_with(heat: torch.Tensor) -> Targets:
    B = heat.shape[0]
    return Targets(
        heatmaps=[heat],
        anno_boxes=[torch.zeros(B, 1, 10)],
        inds=[torch.zeros(B, 1, dtype=torch.long)],
        masks=[torch.zeros(B, 1, dtype=torch.bool)],
    )


def test_distill_losses_hand_case_weights_from_config() -> None:
    from labeldistill.structures import HeadOutput, StudentOutput, TaskOutput, TeacherOutput

    cfg = DistillConfig(lidar_feat_weight=0.7, label_feat_weight=0.2, response_weight=0.0)
    model = LabelDistill(
        nn.Identity(),
        cfg,
        student_channels=(6, 3),
        lidar_teacher=nn.Linear(1, 1),
        label_encoder=nn.Linear(1, 1),
        teacher_channels=(1, 1),
    )
    # 4 x 4 GT heatmap: 1 at (1, 1), 0.5 at (1, 2), 0.25 at (3, 3) -> soft sum 1.75, binary 3.
    heat = torch.zeros(1, 1, 4, 4)
    heat[0, 0, 1, 1], heat[0, 0, 1, 2], heat[0, 0, 3, 3] = 1.0, 0.5, 0.25
    # level 0: teacher 0, adapted 2 everywhere (1 channel) -> squared error 4 per cell
    # level 1 (2 x 2, align_corners bilinear samples rows / cols 0 and 3): W1 = [[0, 0], [0, .25]]
    zeros0, zeros1 = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)
    adapted = (torch.full((1, 1, 4, 4), 2.0), torch.full((1, 1, 2, 2), 3.0))
    task = TaskOutput(*(torch.zeros(1, k, 4, 4) for k in (2, 1, 3, 2, 2, 1)))
    out = DistillOutput(
        student=StudentOutput(HeadOutput([task]), torch.zeros(1), (zeros0, zeros1)),
        lidar=TeacherOutput((zeros0, zeros1), HeadOutput([task])),
        label_feats=(zeros0, zeros1),
        lidar_adapted=adapted,
        label_adapted=adapted,
    )
    losses = model.distill_losses(out, _targets_with(heat), (1.0,) * 10)
    # LiDAR (soft): L0 = 4 * 1.75 / max(1, 1.75) = 4; L1 = 9 * 0.25 / max(1, 0.25) = 2.25
    assert losses["lidar_feat"].item() == pytest.approx(0.7 * (4.0 + 2.25))
    # label (binary): L0 = 4 * 3 / 3 = 4; L1 = 9 * 1 / 1 = 9
    assert losses["label_feat"].item() == pytest.approx(0.2 * (4.0 + 9.0))
    assert losses["response"].item() == 0.0
