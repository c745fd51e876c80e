"""CenterPoint loss helpers (METHOD.md 8.1) on hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from labeldistill.models.losses import (
    clip_sigmoid,
    gather_feat,
    gaussian_focal_loss,
    reduce_mean,
    weighted_l1,
)


def test_clip_sigmoid() -> None:
    out = clip_sigmoid(torch.tensor([-20.0, 0.0, 20.0, math.log(3.0)]))
    torch.testing.assert_close(out, torch.tensor([1e-4, 0.5, 1 - 1e-4, 0.75]))


def test_gaussian_focal_loss_2x2_by_hand() -> None:
    pred = torch.tensor([[0.5, 0.2], [0.9, 0.1]], dtype=torch.float64)
    target = torch.tensor([[1.0, 0.5], [0.0, 0.0]], dtype=torch.float64)
    expected = (
        -math.log(0.5) * 0.5**2  # positive: -log p (1 - p)^2; its negative weight (1 - 1)^4 = 0
        + -math.log(0.8) * 0.2**2 * 0.5**4  # negative with (1 - t)^4 = 1/16
        + -math.log(0.1) * 0.9**2  # negative, t = 0
        + -math.log(0.9) * 0.1**2
    )
    assert expected == pytest.approx(2.0399922, abs=1e-6)
    assert gaussian_focal_loss(pred, target).item() == pytest.approx(expected, rel=1e-9)


def test_gaussian_focal_loss_gradient_flows_only_to_pred() -> None:
    pred = torch.full((3,), 0.3, requires_grad=True)
    loss = gaussian_focal_loss(pred, torch.tensor([0.0, 0.5, 1.0]))
    loss.backward()
    assert pred.grad is not None and torch.all(pred.grad != 0)


def test_weighted_l1_masks_zero_weights_and_nan_targets() -> None:
    pred = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    target = torch.tensor([[0.0, 4.0, float("nan")], [float("inf"), 5.5, 0.0]])
    weight = torch.tensor([[1.0, 0.5, 1.0], [0.0, 2.0, 1.0]])
    # 1 * 1 + 0.5 * 2 + (nan target skipped) + (weight 0 skipped) + 2 * 0.5 + 1 * 6 = 9
    assert weighted_l1(pred, target, weight).item() == pytest.approx(9.0)


def test_gather_feat() -> None:
    maps = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4)
    inds = torch.tensor([[0, 5], [7, 7]])
    out = gather_feat(maps, inds)
    assert out.shape == (2, 2, 3)
    # sample 0 cell 5 = (y 1, x 1): channel c value = c * 8 + 5; sample 1 offset 24.
    assert out[0, 1].tolist() == [5.0, 13.0, 21.0]
    assert out[1, 0].tolist() == [24 + 7.0, 24 + 15.0, 24 + 23.0]
    assert out[0, 0].tolist() == [0.0, 8.0, 16.0]


def test_reduce_mean_without_distributed_is_identity() -> None:
    assert reduce_mean(torch.tensor(3.5)).item() == 3.5
