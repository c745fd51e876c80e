"""benchmarks/distill_gradients.py: the frame check's contrasts and the per-part gradient norms,
on hand-made maps and a hand-made two-parameter model."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def diag():
    path = REPO / "benchmarks" / "distill_gradients.py"
    spec = importlib.util.spec_from_file_location("distill_gradients", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_contrast_hand_case(diag) -> None:
    value = torch.tensor([[[[4.0, 1.0], [1.0, 2.0]]]])
    mask = torch.tensor([[[[True, False], [False, True]]]])
    assert diag.contrast(value, mask) == pytest.approx(3.0 / 1.0)


def test_a_teacher_in_the_student_frame_wins_only_as_is(diag) -> None:
    # one class, one object off every symmetry axis: GT peak at (y=1, x=4) on an 8 x 8 grid
    gt = torch.zeros(1, 1, 8, 8)
    gt[0, 0, 1, 4] = 1.0
    logits = torch.full((1, 1, 8, 8), -6.0)
    logits[0, 0, 1, 4] = 3.0  # a teacher that sees the object where the GT puts it
    feats = torch.zeros(1, 4, 8, 8)
    feats[0, :, 1, 4] = 2.0
    feats[0, :, 0, 0] = 0.1
    task = SimpleNamespace(heatmap=logits)
    lidar = SimpleNamespace(head=SimpleNamespace(tasks=[task]), feats=[feats])
    out = SimpleNamespace(lidar=lidar, label_feats=[feats])
    rows = diag.frame_check(out, SimpleNamespace(heatmaps=[gt]))
    assert set(rows) == {
        "LiDAR heatmap (at GT centres)",
        "LiDAR features level 0",
        "label features level 0",
    }
    for row in rows.values():
        assert row["as is"] > 100.0
        for wrong in ("transposed", "x flipped", "y flipped"):
            assert row[wrong] < 1.0


def test_part_norms_split_the_gradient_by_part(diag) -> None:
    a, b = nn.Parameter(torch.tensor([3.0])), nn.Parameter(torch.tensor([1.0, 2.0]))
    loss = 2.0 * a.sum() + (b * b).sum()
    g = diag.grads_of(loss, [a, b])
    norms = diag.part_norms(g, {"first": [a], "second": [b]})
    assert norms["first"] == pytest.approx(2.0)
    assert norms["second"] == pytest.approx((2.0**2 + 4.0**2) ** 0.5)  # d/db b^2 = 2b


def test_mean_of_nested_rows(diag) -> None:
    rows = [{"x": {"y": 1.0}}, {"x": {"y": 3.0}}]
    assert diag.mean_of(rows) == {"x": {"y": {"mean": 2.0, "std": pytest.approx(2**0.5)}}}
