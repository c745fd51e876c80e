"""The closed-form 4x4 inverse equals torch.inverse."""

from __future__ import annotations

import torch

from labeldistill.ops.inverse import inverse_4x4


def test_inverse_4x4_matches_torch() -> None:
    g = torch.Generator().manual_seed(0)
    m = (
        torch.randn(6, 4, 4, generator=g, dtype=torch.float64) * 3
        + torch.eye(4, dtype=torch.float64) * 5
    )
    k = torch.eye(4, dtype=torch.float64)
    k[0, 0], k[1, 1], k[0, 2], k[1, 2] = 1266.4, 1266.4, 816.3, 491.5
    both = torch.cat([m, k[None]])
    assert torch.allclose(inverse_4x4(both), torch.inverse(both), atol=1e-10, rtol=1e-9)
    assert torch.allclose(
        inverse_4x4(both) @ both, torch.eye(4, dtype=torch.float64).expand(7, 4, 4), atol=1e-9
    )
