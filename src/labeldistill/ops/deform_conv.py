"""Deformable convolution v1 in plain ops (``grid_sample`` and a grouped matrix product): the
exportable twin of ``torchvision.ops.deform_conv2d``, which has no ONNX operator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def deform_conv2d_plain(
    x: Tensor, offset: Tensor, weight: Tensor, padding: int = 1, groups: int = 1
) -> Tensor:
    """Deformable convolution v1 (stride 1, dilation 1, one deformable group) in plain ops.

    x [B, C, H, W]; offset [B, 2*k*k, H', W'] with (dy, dx) per kernel tap (torchvision's
    layout, tap = ky * k + kx); weight [O, C / groups, k, k] -> [B, O, H', W'] with
    H' = H + 2 * padding - k + 1. Bilinear sampling with zeros outside the image, as
    ``torchvision.ops.deform_conv2d``; implemented with ``grid_sample`` (align_corners=True).
    """
    b, c, h, w = x.shape
    o, c_g, k, _ = weight.shape
    ho, wo = offset.shape[2], offset.shape[3]
    taps = k * k
    ky = torch.arange(k, dtype=x.dtype, device=x.device).repeat_interleave(k)  # [taps]
    kx = torch.arange(k, dtype=x.dtype, device=x.device).repeat(k)
    ys = torch.arange(ho, dtype=x.dtype, device=x.device) - padding
    xs = torch.arange(wo, dtype=x.dtype, device=x.device) - padding
    off = offset.view(b, taps, 2, ho, wo)
    py = ys.view(1, 1, ho, 1) + ky.view(1, taps, 1, 1) + off[:, :, 0]  # [B, taps, H', W']
    px = xs.view(1, 1, 1, wo) + kx.view(1, taps, 1, 1) + off[:, :, 1]
    gx = px * (2.0 / max(w - 1, 1)) - 1.0
    gy = py * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1).view(b, taps * ho, wo, 2)
    sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    cols = sampled.view(b, groups, c_g, taps, ho * wo).reshape(b, groups, c_g * taps, ho * wo)
    wmat = weight.view(groups, o // groups, c_g * taps)  # [G, O/G, C/G * taps]
    out = torch.matmul(wmat.unsqueeze(0), cols)  # [B, G, O/G, H'W']
    return out.reshape(b, o, ho, wo)
