"""Circle NMS (METHOD.md 4.7 step 4): hand-made cases and the fast path against the reference."""

from __future__ import annotations

import pytest
import torch

from labeldistill.ops.nms import circle_nms, circle_nms_reference

IMPLS = [circle_nms_reference, circle_nms]


@pytest.mark.parametrize("nms", IMPLS, ids=["reference", "fast"])
def test_hand_case(nms) -> None:
    # Inputs deliberately not in score order. By score: A(0.9) at 0, B(0.8) at 1, C(0.7) at 1.9,
    # D(0.6) at 5, E(0.5) at (5, 1.2).
    centers = torch.tensor([[1.9, 0.0], [0.0, 0.0], [5.0, 0.0], [1.0, 0.0], [5.0, 1.2]])
    scores = torch.tensor([0.7, 0.9, 0.6, 0.8, 0.5])
    # thresh 1: B is at squared distance 1 from A -> suppressed (inclusive); C is 0.81 from B,
    # but B is suppressed, and 3.61 from A -> kept; D kept; E is 1.44 from D -> kept.
    assert nms(centers, scores, 1.0, 83).tolist() == [1, 0, 2, 4]
    # thresh 1.5: E (1.44) goes too.
    assert nms(centers, scores, 1.5, 83).tolist() == [1, 0, 2]
    # thresh 0.5: nothing is that close (B-C 0.81 is the smallest distance).
    assert nms(centers, scores, 0.5, 83).tolist() == [1, 3, 0, 2, 4]
    # post_max_size cuts the greedy list.
    assert nms(centers, scores, 1.0, 2).tolist() == [1, 0]


@pytest.mark.parametrize("nms", IMPLS, ids=["reference", "fast"])
def test_empty_single_and_ties(nms) -> None:
    assert nms(torch.zeros(0, 2), torch.zeros(0), 4.0, 83).tolist() == []
    assert nms(torch.tensor([[3.0, 4.0]]), torch.tensor([0.2]), 4.0, 83).tolist() == [0]
    # Equal scores: the earlier box wins (stable order).
    centers = torch.tensor([[0.0, 0.0], [0.5, 0.0], [10.0, 0.0]])
    assert nms(centers, torch.tensor([0.5, 0.5, 0.5]), 1.0, 83).tolist() == [0, 2]


@pytest.mark.parametrize("thresh", [0.175, 0.85, 1.0, 4.0, 10.0, 12.0])
def test_fast_matches_reference(thresh: float) -> None:
    gen = torch.Generator().manual_seed(int(thresh * 1000))
    for m in (2, 50, 500):
        centers = torch.rand(m, 2, generator=gen) * 40 - 20
        scores = torch.rand(m, generator=gen)
        for post_max in (83, 1000):
            ref = circle_nms_reference(centers, scores, thresh, post_max)
            fast = circle_nms(centers, scores, thresh, post_max)
            assert torch.equal(ref, fast)
            assert len(ref) <= post_max


def test_nan_centre_behaves_like_reference() -> None:
    centers = torch.tensor([[0.0, 0.0], [float("nan"), 0.0], [0.5, 0.0], [9.0, 9.0]])
    scores = torch.tensor([0.5, 0.9, 0.4, 0.3])
    ref = circle_nms_reference(centers, scores, 1.0, 83)
    assert ref.tolist() == [1, 0, 3]  # the NaN box is kept and suppresses nothing
    assert torch.equal(circle_nms(centers, scores, 1.0, 83), ref)
