"""Distillation losses on hand-worked cases (METHOD.md 7, 8.3, 8.4)."""

from __future__ import annotations

import math

import pytest
import torch

from labeldistill.models.distill import (
    DistillAdaptor,
    heatmap_weights,
    partition_channels,
    partition_slices,
    response_distill_loss,
    weighted_feature_loss,
)
from labeldistill.structures import HeadOutput, Targets, TaskOutput


def test_partition_thirds_and_none() -> None:
    assert partition_slices(450, "thirds") == (slice(0, 150), slice(150, 300))
    assert partition_slices(300, "thirds") == (slice(0, 100), slice(100, 200))
    assert partition_channels(750, "thirds") == 250
    assert partition_slices(450, "none") == (slice(0, 450), slice(0, 450))
    with pytest.raises(ValueError):
        partition_slices(3, "halves")


def test_weighted_feature_loss_hand_case() -> None:
    teacher = torch.zeros(1, 2, 2, 2)
    student = torch.full((1, 2, 2, 2), 3.0)
    student[0, :, 0, 0] = torch.tensor([1.0, 2.0])  # squared sum 5
    student[0, :, 1, 0] = torch.tensor([0.0, 2.0])  # squared sum 4
    weight = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]]]])
    # (1 * 5 + 0.5 * 4) / max(1, 1.5)
    assert weighted_feature_loss(teacher, student, weight).item() == pytest.approx(7 / 1.5)
    # A total weight below 1 is not used as a divisor.
    assert weighted_feature_loss(teacher, student, weight * 0.1).item() == pytest.approx(0.7)


@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
def test_weighted_feature_loss_in_fp32_for_half_features(amp_dtype) -> None:
    """Issue 13 item 5: half-precision features (autocast outputs) of a few hundred: the channel
    sum of squares is taken in fp32 (in fp16 it overflows to inf; in bf16 it rounds), so the
    loss equals the fp32 loss of the same features and its gradient is finite."""
    gen = torch.Generator().manual_seed(0)
    teacher = (torch.randn(2, 64, 4, 4, generator=gen) * 300).to(amp_dtype)
    student = (torch.randn(2, 64, 4, 4, generator=gen) * 300).to(amp_dtype).requires_grad_(True)
    weight = torch.rand(2, 1, 4, 4, generator=gen).to(amp_dtype)
    expected = weighted_feature_loss(teacher.double(), student.detach().double(), weight.double())
    with torch.autocast("cpu", dtype=amp_dtype):
        loss = weighted_feature_loss(teacher, student, weight)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert student.grad.dtype == amp_dtype and torch.isfinite(student.grad.float()).all()


def _targets(heatmaps, inds, masks) -> Targets:
    return Targets(
        heatmaps=heatmaps,
        anno_boxes=[torch.zeros(i.shape[0], i.shape[1], 10) for i in inds],
        inds=inds,
        masks=masks,
    )


def test_heatmap_weights_soft_and_binary() -> None:
    h1 = torch.zeros(1, 1, 4, 4)
    h2 = torch.zeros(1, 2, 4, 4)
    h1[0, 0, 1, 1] = 1.0
    h2[0, 1, 1, 1] = 0.5  # overlaps: soft weight 1.5 > 1
    h2[0, 0, 3, 3] = 0.25
    t = _targets([h1, h2], [torch.zeros(1, 2, dtype=torch.long)] * 2, [torch.zeros(1, 2)] * 2)
    w0, w1 = heatmap_weights(t, binary=False)
    assert w0.shape == (1, 1, 4, 4) and w1.shape == (1, 1, 2, 2)
    assert w0[0, 0, 1, 1] == 1.5 and w0[0, 0, 3, 3] == 0.25 and w0.sum() == 1.75
    # align_corners=True bilinear 4 -> 2 samples the corners 0 and 3 exactly.
    assert w1[0, 0, 1, 1] == pytest.approx(0.25) and w1[0, 0, 0, 0] == 0
    b0, b1 = heatmap_weights(t, binary=True)
    assert b0.sum() == 2 and b0.max() == 1
    assert b1[0, 0, 1, 1] == 1 and b1.sum() == 1


def _task(heat_logits: torch.Tensor, code_value: float) -> TaskOutput:
    B, _, Y, X = heat_logits.shape
    full = lambda c: torch.full((B, c, Y, X), code_value)  # noqa: E731
    return TaskOutput(
        reg=full(2), height=full(1), dim=full(3), rot=full(2), vel=full(2), heatmap=heat_logits
    )


def test_response_loss_hand_case() -> None:
    # One task, one class, 2 x 2 grid. Student probabilities 0.5 everywhere; teacher ~1 at cell 0
    # (clipped to 1 - 1e-4) and 0.5 elsewhere; GT heatmap [1, 0.5, 0, 0].
    student = HeadOutput([_task(torch.zeros(1, 1, 2, 2), 0.0)])
    t_logits = torch.zeros(1, 1, 2, 2)
    t_logits[0, 0, 0, 0] = 30.0
    teacher = HeadOutput([_task(t_logits, 1.0)])
    gt = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
    targets = _targets([gt], [torch.tensor([[0, 0]])], [torch.tensor([[True, False]])])
    cw = (1.0,) * 8 + (0.5, 0.5)
    # Only the negative focal term is active: sum -log(1 - P) P^2 (1 - T Y)^4, num_pos = 1.
    t_y = [(1 - 1e-4) * 1.0, 0.5 * 0.5, 0.0, 0.0]
    focal = sum(-math.log(0.5) * 0.25 * (1 - v) ** 4 for v in t_y)
    # Box part: |0 - 1| on 10 channels weighted by cw (sum 9) at the one valid GT centre.
    box = 0.25 * 9.0 / (1.0 + torch.finfo(torch.float32).eps)
    loss = response_distill_loss(student, teacher, targets, cw, bbox_weight=0.25)
    assert loss.item() == pytest.approx(focal + box, rel=1e-5)


def test_adaptor_shapes_and_published_names() -> None:
    ad = DistillAdaptor((150, 100), (128, 256))
    keys = {k: tuple(v.shape) for k, v in ad.state_dict().items()}
    assert keys["blocks.0.0.weight"] == (128, 150, 3, 3)
    assert keys["blocks.1.0.weight"] == (256, 100, 3, 3)
    assert "blocks.0.3.conv1.weight" in keys and "blocks.1.3.bn2.running_var" in keys
    a, b = ad((torch.randn(2, 150, 8, 8), torch.randn(2, 100, 4, 4)))
    assert a.shape == (2, 128, 8, 8) and b.shape == (2, 256, 4, 4)


def test_feature_loss_sends_no_gradient_to_the_teacher_features() -> None:
    # METHOD.md 8.3: teacher features are constants of the loss; the adaptor outputs get the
    # gradient 2 W (A - T) / sum W.
    from labeldistill.models.distill import feature_distill_loss
    from labeldistill.structures import Targets

    torch.manual_seed(0)
    heat = torch.zeros(1, 1, 8, 8)
    heat[0, 0, 2, 3] = 1.0
    heat[0, 0, 5, 5] = 0.5
    targets = Targets(heatmaps=[heat], anno_boxes=[], inds=[], masks=[])
    teacher = [
        torch.randn(1, 3, 8, 8, requires_grad=True),
        torch.randn(1, 4, 4, 4, requires_grad=True),
    ]
    adapted = [
        torch.randn(1, 3, 8, 8, requires_grad=True),
        torch.randn(1, 4, 4, 4, requires_grad=True),
    ]
    loss = feature_distill_loss(teacher, adapted, targets, binary=False)
    loss.backward()
    assert teacher[0].grad is None and teacher[1].grad is None
    w = heat[0, 0]
    expected = 2 * w * (adapted[0] - teacher[0]).detach()[0] / w.sum()
    torch.testing.assert_close(adapted[0].grad[0], expected)
    assert adapted[1].grad.abs().sum() > 0
