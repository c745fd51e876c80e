"""CornerNet Gaussian radius and Gaussian heatmap drawing (METHOD.md 4.6).

Heatmaps are ``[Y, X]`` tensors (one class plane); centres are integer cells ``(x, y)``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor


def gaussian_radius(det_size: tuple[float, float], min_overlap: float = 0.5) -> float:
    """CornerNet radius for a box of ``det_size = (h, w)`` cells and overlap ``min_overlap``.

    Three roots (METHOD.md 4.6), the smallest is returned:
    ``r1 = (b1 + sqrt(b1^2 - 4 c1)) / 2`` with ``b1 = h + w``, ``c1 = w h (1 - o) / (1 + o)``;
    ``r2 = (b2 + sqrt(b2^2 - 16 c2)) / 2`` with ``b2 = 2 (h + w)``, ``c2 = (1 - o) w h``;
    ``r3 = (b3 + sqrt(b3^2 - 16 o c3)) / 2`` with ``b3 = -2 o (h + w)``, ``c3 = (o - 1) w h``.
    """
    h = torch.tensor([float(det_size[0])], dtype=torch.float64)
    w = torch.tensor([float(det_size[1])], dtype=torch.float64)
    return float(gaussian_radius_tensor(h, w, min_overlap)[0])


def gaussian_radius_tensor(h: Tensor, w: Tensor, min_overlap: float = 0.5) -> Tensor:
    """Vectorised :func:`gaussian_radius` in the dtype of the inputs.

    h, w: [M] sizes in cells (h is the first entry of ``det_size``) -> [M] radii.
    """
    o = float(min_overlap)
    b1 = h + w
    c1 = w * h * (1 - o) / (1 + o)
    r1 = (b1 + torch.sqrt(b1 * b1 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - o) * w * h
    r2 = (b2 + torch.sqrt(b2 * b2 - 16 * c2)) / 2
    b3 = -2 * o * (h + w)
    c3 = (o - 1) * w * h
    r3 = (b3 + torch.sqrt(b3 * b3 - 16 * o * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def gaussian_2d(shape: tuple[int, int], sigma: float = 1.0) -> Tensor:
    """Unnormalised 2-D Gaussian ``exp(-(x^2 + y^2) / (2 sigma^2))`` on a centred grid.

    shape: (rows, cols), odd sizes centre the peak (value 1) in the middle. Values below
    float64 eps times the maximum are set to 0. Returns a float64 [rows, cols] tensor.
    """
    m = (shape[0] - 1.0) / 2.0
    n = (shape[1] - 1.0) / 2.0
    y = np.arange(-m, m + 1, dtype=np.float64)[:, None]
    x = np.arange(-n, n + 1, dtype=np.float64)[None, :]
    g = np.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    g[g < np.finfo(np.float64).eps * g.max()] = 0.0
    return torch.from_numpy(g)


@functools.lru_cache(maxsize=256)
def _cached_kernel(radius: int) -> Tensor:
    diameter = 2 * radius + 1
    return gaussian_2d((diameter, diameter), sigma=diameter / 6.0)


def draw_gaussian(heatmap: Tensor, center: tuple[int, int], radius: int, k: float = 1.0) -> Tensor:
    """Draw a Gaussian of diameter ``2 radius + 1`` and sigma ``diameter / 6`` in place.

    heatmap: [Y, X]; center: integer cell (x, y); the heatmap becomes the element-wise maximum
    of itself and ``k`` times the Gaussian, clipped at the borders. A centre outside the map
    draws only the part of the Gaussian that overlaps it (nothing if none). Returns ``heatmap``.
    """
    radius = int(radius)
    x, y = int(center[0]), int(center[1])
    height, width = int(heatmap.shape[0]), int(heatmap.shape[1])
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    if min(left + right, top + bottom) <= 0 or min(left, top) < -radius:
        return heatmap
    region = heatmap[y - top : y + bottom, x - left : x + right]
    kernel = _cached_kernel(radius)[radius - top : radius + bottom, radius - left : radius + right]
    if region.numel() == 0 or region.shape != kernel.shape:
        return heatmap
    kernel = kernel.to(device=heatmap.device, dtype=heatmap.dtype)
    torch.maximum(region, kernel * k, out=region)
    return heatmap
