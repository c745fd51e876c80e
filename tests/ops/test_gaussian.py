"""CornerNet radius and Gaussian drawing (METHOD.md 4.6) on hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from labeldistill.ops.gaussian import (
    draw_gaussian,
    gaussian_2d,
    gaussian_radius,
    gaussian_radius_tensor,
)


@pytest.mark.parametrize(
    ("h", "w", "overlap", "expected"),
    [
        # b3 = -1.5, c3 = -11.25: r3 = (-1.5 + sqrt(2.25 + 18)) / 2 = 1.5; r1 = 5.71, r2 = 10.85.
        (2.5, 5.0, 0.1, 1.5),
        # b3 = -8, c3 = -8: r3 = (-8 + sqrt(64 + 64)) / 2 = 4 (sqrt 2 - 1); r1 = 7.27, r2 = 13.66.
        (4.0, 4.0, 0.5, 4 * (math.sqrt(2) - 1)),
        # b3 = -0.8, c3 = -2.7: r3 = (-0.8 + sqrt(0.64 + 4.32)) / 2; r1 = 3.24.
        (3.0, 1.0, 0.1, (-0.8 + math.sqrt(4.96)) / 2),
        # b3 = -6, c3 = -112.5: r3 = (-6 + sqrt(216)) / 2 = 4.348 (bus of 20 x 4 m on 0.8 m cells).
        (5.0, 25.0, 0.1, (-6 + math.sqrt(216)) / 2),
    ],
)
def test_gaussian_radius_hand_values(h: float, w: float, overlap: float, expected: float) -> None:
    assert gaussian_radius((h, w), overlap) == pytest.approx(expected, rel=1e-12)
    vec = gaussian_radius_tensor(
        torch.tensor([h], dtype=torch.float64), torch.tensor([w], dtype=torch.float64), overlap
    )
    assert vec.item() == pytest.approx(expected, rel=1e-12)


def test_gaussian_radius_is_min_of_three_roots() -> None:
    # h = w = 1, o = 0.9: r1 = (2 + sqrt(4 - 4 * 0.1 / 1.9)) / 2, r3 = (-3.6 + sqrt(14.4)) / 2.
    r1 = (2 + math.sqrt(4 - 4 * 0.1 / 1.9)) / 2
    r3 = (-3.6 + math.sqrt(14.4)) / 2
    assert r3 < r1
    assert gaussian_radius((1.0, 1.0), 0.9) == pytest.approx(r3, rel=1e-12)


def test_gaussian_radius_tensor_matches_scalar() -> None:
    g = torch.Generator().manual_seed(1)
    h = torch.rand(50, generator=g, dtype=torch.float64) * 30 + 0.1
    w = torch.rand(50, generator=g, dtype=torch.float64) * 30 + 0.1
    vec = gaussian_radius_tensor(h, w, 0.1)
    ref = torch.tensor(
        [gaussian_radius((a, b), 0.1) for a, b in zip(h.tolist(), w.tolist())], dtype=torch.float64
    )
    torch.testing.assert_close(vec, ref, rtol=1e-12, atol=0)


def test_gaussian_2d_values_and_eps_cut() -> None:
    g = gaussian_2d((5, 5), sigma=5 / 6)
    assert g.shape == (5, 5)
    assert g[2, 2].item() == 1.0
    assert g[2, 3].item() == pytest.approx(math.exp(-0.72), rel=1e-12)  # 1 / (2 * 25 / 36)
    assert g[0, 0].item() == pytest.approx(math.exp(-8 * 0.72), rel=1e-12)
    # sigma 0.2: exp(-25) at distance^2 = 2 survives, exp(-50) at distance 2 is below eps -> 0.
    g = gaussian_2d((7, 7), sigma=0.2)
    assert g[3, 4].item() == pytest.approx(math.exp(-12.5), rel=1e-12)
    assert g[4, 4].item() == pytest.approx(math.exp(-25.0), rel=1e-12)
    assert g[3, 5].item() == 0.0
    assert int((g > 0).sum()) == 9


def test_draw_gaussian_peak_sigma_and_max() -> None:
    heat = torch.zeros(10, 12)
    heat[4, 4] = 0.9  # stays (larger than the Gaussian there)
    heat[4, 5] = 0.1  # stays (Gaussian is exp(-2.88) = 0.056 at distance 2)
    draw_gaussian(heat, (3, 4), 2)  # x = 3, y = 4
    assert heat[4, 3].item() == 1.0
    assert heat[4, 4].item() == pytest.approx(0.9)
    assert heat[4, 5].item() == pytest.approx(0.1)
    assert heat[4, 2].item() == pytest.approx(math.exp(-0.72), rel=1e-6)
    assert heat[3, 3].item() == pytest.approx(math.exp(-0.72), rel=1e-6)
    assert heat[2, 1].item() == pytest.approx(math.exp(-5.76), rel=1e-6)
    assert heat[4, 6].item() == 0.0 and heat[7, 3].item() == 0.0  # outside radius 2
    assert int((heat > 0).sum()) == 25


def test_draw_gaussian_clipped_at_borders() -> None:
    kernel = gaussian_2d((5, 5), sigma=5 / 6).float()
    heat = torch.zeros(10, 10)
    draw_gaussian(heat, (0, 0), 2)
    torch.testing.assert_close(heat[:3, :3], kernel[2:, 2:])
    assert int((heat > 0).sum()) == 9
    heat = torch.zeros(10, 10)
    draw_gaussian(heat, (9, 8), 2)  # x = 9 (last column), y = 8
    torch.testing.assert_close(heat[6:10, 7:10], kernel[:4, :3])
    assert int((heat > 0).sum()) == 12
