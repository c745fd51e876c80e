"""BEVDepth depth loss from LiDAR depth maps (METHOD.md 8.2).

Targets: the LiDAR depth map [B, N, H, W] (0 = no point) is min-pooled over non-zero depths in
``ds x ds`` blocks (zeros count as 1e5), each block's depth d gets bin
``floor((d - (d_min - step)) / step)``, valid when in [0, D + 1), else 0; a one-hot over D + 1
classes with class 0 dropped gives [B*N*h*w, D] (d in [d_min + k step, d_min + (k+1) step)
-> bin k; d < d_min, d >= d_max or no point -> all-zero row). The loss is the BCE summed over
the D bins of the foreground rows divided by max(1, #foreground); the weight (3.0) is the
caller's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Stand-in for "no LiDAR point" in the min-pooling.
NO_POINT = 1e5


def downsample_depth(depth_gt: Tensor, downsample: int) -> Tensor:
    """Per-block minimum of the non-zero depths: [B, N, H, W] -> [B*N, H/ds, W/ds] (1e5 = none)."""
    b, n, height, width = depth_gt.shape
    h, w = height // downsample, width // downsample
    x = depth_gt.reshape(b * n, h, downsample, w, downsample).permute(0, 1, 3, 2, 4)
    x = x.reshape(b * n, h, w, downsample * downsample).float()
    x = torch.where(x == 0.0, torch.full_like(x, NO_POINT), x)
    return x.min(dim=-1).values


def depth_targets(depth_gt: Tensor, downsample: int, d_bound: tuple[float, float, float]) -> Tensor:
    """One-hot depth-bin targets: [B, N, H, W] metres -> [B*N*h*w, D] float (rows of zeros
    where there is no target)."""
    d_min, d_max, step = d_bound
    num_bins = round((d_max - d_min) / step)
    d = downsample_depth(depth_gt, downsample)
    idx = (d - (d_min - step)) / step
    idx = torch.where((idx < num_bins + 1) & (idx >= 0.0), idx, torch.zeros_like(idx))
    idx = idx.floor().long().reshape(-1, 1)
    # one-hot by scatter (F.one_hot reads the index range back to the host on CUDA)
    onehot = torch.zeros(idx.shape[0], num_bins + 1, dtype=torch.float32, device=idx.device)
    onehot.scatter_(1, idx, 1.0)
    return onehot[:, 1:]


def depth_loss(
    depth_probs: Tensor, depth_gt: Tensor, downsample: int, d_bound: tuple[float, float, float]
) -> Tensor:
    """Unweighted BEVDepth depth loss (fp32, autocast off).

    depth_probs [B*N, D, h, w] softmax probabilities of the key frame; depth_gt [B, N, H, W]
    -> scalar: sum over foreground rows of BCE summed over D, / max(1, #foreground).
    """
    target = depth_targets(depth_gt, downsample, d_bound).to(depth_probs.device)
    num_bins = target.shape[1]
    device_type = depth_probs.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        pred = depth_probs.float().permute(0, 2, 3, 1).reshape(-1, num_bins)
        if pred.shape[0] != target.shape[0]:
            raise ValueError(
                f"depth predictions {tuple(depth_probs.shape)} do not match depth GT "
                f"{tuple(depth_gt.shape)} at downsample {downsample}"
            )
        fg = target.amax(dim=1) > 0.0
        # Foreground rows by weighting, not by selection (a boolean index and the count read
        # back would be two host synchronisations on CUDA); background BCE terms are finite
        # (log clamped at -100) and weighted by 0.
        bce = F.binary_cross_entropy(pred, target, reduction="none").sum(dim=1)
        loss = (bce * fg.to(bce.dtype)).sum()
        return loss / fg.sum().to(loss.dtype).clamp(min=1.0)
