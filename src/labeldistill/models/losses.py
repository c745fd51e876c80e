"""CenterPoint loss helpers (METHOD.md 8.1), shared by the detection and the response losses.

All losses return the *sum* over elements; the caller divides by its normaliser.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from labeldistill.ops.box_coder import gather_cells

#: Clamp of :func:`clip_sigmoid`.
SIGMOID_CLAMP = 1e-4
#: Inside the logarithms of :func:`gaussian_focal_loss`.
LOG_EPS = 1e-12


def clip_sigmoid(x: Tensor, eps: float = SIGMOID_CLAMP) -> Tensor:
    """``sigmoid(x)`` clamped to ``[eps, 1 - eps]`` (not in place); any shape."""
    return torch.clamp(x.sigmoid(), min=eps, max=1 - eps)


def gaussian_focal_loss(
    pred: Tensor, target: Tensor, alpha: float = 2.0, gamma: float = 4.0
) -> Tensor:
    """Summed Gaussian focal loss (mmdet, METHOD.md 8.1).

    pred: probabilities, target: soft targets in [0, 1], same shape. Per element
    ``-log(p + 1e-12) (1 - p)^alpha [t == 1] - log(1 - p + 1e-12) p^alpha (1 - t)^gamma``.
    Returns a scalar (sum over all elements).
    """
    pos = target.eq(1).to(pred.dtype)
    neg = (1 - target).pow(gamma)
    pos_loss = -(pred + LOG_EPS).log() * (1 - pred).pow(alpha) * pos
    neg_loss = -(1 - pred + LOG_EPS).log() * pred.pow(alpha) * neg
    return (pos_loss + neg_loss).sum()


def weighted_l1(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Summed ``weight * |pred - target|``; entries with weight 0 or a NaN target contribute 0
    (even when the difference is NaN/inf). Shapes broadcast; returns a scalar."""
    valid = (weight != 0) & ~torch.isnan(target)
    diff = torch.where(
        valid, (pred - target).abs() * weight, torch.zeros((), dtype=pred.dtype, device=pred.device)
    )
    return diff.sum()


def gather_feat(maps: Tensor, inds: Tensor) -> Tensor:
    """Values of dense maps at flat cell indices: maps [B, C, Y, X], inds [B, K] -> [B, K, C]."""
    return gather_cells(maps, inds)


def reduce_mean(value: Tensor) -> Tensor:
    """All-reduce mean over processes when ``torch.distributed`` is initialised, else identity.

    value: a scalar tensor (a detached copy is reduced; no gradient flows through it).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()
