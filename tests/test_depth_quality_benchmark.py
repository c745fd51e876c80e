"""benchmarks/depth_quality.py: the depth statistics on hand-worked cells."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
D_BOUND = (2.0, 10.0, 2.0)  # 4 bins, centres 3, 5, 7, 9 m


@pytest.fixture(scope="module")
def dq():
    spec = importlib.util.spec_from_file_location(
        "depth_quality", REPO / "benchmarks" / "depth_quality.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["depth_quality"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_stats_hand_worked(dq) -> None:
    stats = dq.DepthStats(4)
    probs = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    target = torch.tensor([5.5, 9.0])  # bins 1 and 3
    stats.add(probs, target, D_BOUND)
    s = stats.summary()
    # cell 1: argmax 1 = bin 1 (hit), expected depth 5 -> |err| 0.5
    # cell 2: argmax 0 (first of a tie) vs bin 3 (miss, 3 bins off), expected 6 -> |err| 3
    assert s["all"] == {"cells": 2, "top1": 0.5, "within_1_bin": 0.5, "mae_m": 1.75}
    assert s["0-20"] == s["all"]
    assert s["20-30"] == {"cells": 0, "top1": 0.0, "within_1_bin": 0.0, "mae_m": 0.0}
    assert stats.hist.tolist() == [0, 1, 0, 1]
    assert dq.reference(stats) == {"most_frequent_bin": 1, "top1": 0.5}


def test_foreground_keeps_the_depth_loss_rows(dq) -> None:
    # one 4x4 image, stride 2 -> 2x2 cells: no point / 1 m (< d_min) / 5 m / 30 m (>= d_max)
    depth = torch.zeros(1, 1, 4, 4)
    depth[0, 0, 0, 2] = 1.0
    depth[0, 0, 2, 0], depth[0, 0, 3, 1] = 7.0, 5.0  # min-pooled: 5
    depth[0, 0, 2, 2] = 30.0
    probs = torch.arange(16, dtype=torch.float32).reshape(1, 4, 2, 2)  # [B*N, D, h, w]
    p, t = dq.foreground(probs, depth, 2, D_BOUND)
    assert t.tolist() == [5.0]
    assert p.tolist() == [[2.0, 6.0, 10.0, 14.0]]  # cell (1, 0) across the 4 bins
