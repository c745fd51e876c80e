"""Hard voxelisation of point clouds and the mean voxel feature encoder (METHOD.md 5).

Semantics follow mmcv's hard ``Voxelization`` (the published ``pts_voxel_layer``):

* voxel coordinate per axis ``floor((p - min) / size)``; a point is kept only when every
  coordinate lies in ``[0, grid)``, with ``grid = round((max - min) / size)`` (so points exactly
  on the upper bound, and the ``-999`` padding rows, are dropped);
* voxels are numbered in order of the first appearance of any of their points in the input;
* at most ``max_voxels`` voxels (the first ones in that order; points of later voxels dropped);
* each voxel keeps its first ``max_points`` points in input order; unused rows are zero.

Everything is vectorised torch (unique / sort / scatter), deterministic and device agnostic.
Glossary: P points, V voxels, T = max points per voxel, C point features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from labeldistill.structures import _Movable


def grid_size(point_range: Sequence[float], voxel_size: Sequence[float]) -> tuple[int, int, int]:
    """Number of voxels along (x, y, z): ``round((max - min) / size)`` per axis."""
    return tuple(  # type: ignore[return-value]
        int(round((float(point_range[3 + i]) - float(point_range[i])) / float(voxel_size[i])))
        for i in range(3)
    )


@dataclass
class Voxels(_Movable):
    """Voxels of one point cloud.

    voxels:     [V, T, C] the first T points of each voxel (zero rows after ``num_points``).
    coords:     [V, 3] int64 voxel coordinates (z, y, x).
    num_points: [V] int64 number of real points per voxel (1..T).
    """

    voxels: Tensor
    coords: Tensor
    num_points: Tensor


@dataclass
class BatchVoxels(_Movable):
    """Voxels of a batch, concatenated over samples.

    voxels [sum V, T, C]; coors [sum V, 4] int64 (b, z, y, x); num_points [sum V] int64.
    """

    voxels: Tensor
    coors: Tensor
    num_points: Tensor


def voxelize(
    points: Tensor,
    voxel_size: Sequence[float],
    point_range: Sequence[float],
    max_points: int,
    max_voxels: int,
) -> Voxels:
    """Hard voxelisation of one point cloud.

    points [P, C] (x, y, z, ...) -> :class:`Voxels`. ``point_range`` is
    (x_min, y_min, z_min, x_max, y_max, z_max); ``voxel_size`` is (dx, dy, dz).
    """
    if points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be [P, C>=3], got {tuple(points.shape)}")
    device = points.device
    num_feat = points.shape[1]
    nx, ny, nz = grid_size(point_range, voxel_size)
    lower = torch.tensor(point_range[:3], dtype=points.dtype, device=device)
    size = torch.tensor(voxel_size, dtype=points.dtype, device=device)
    upper = torch.tensor([nx, ny, nz], dtype=torch.long, device=device)

    xyz = points[:, :3]
    finite = torch.isfinite(xyz).all(dim=1)
    cell_f = torch.floor((torch.where(finite[:, None], xyz, lower) - lower) / size)
    cell = cell_f.long()
    valid = finite & (cell >= 0).all(dim=1) & (cell < upper).all(dim=1)
    point_idx = torch.nonzero(valid).squeeze(1)  # increasing input order
    cell = cell[point_idx]
    n_valid = int(point_idx.numel())
    if n_valid == 0 or max_voxels <= 0:
        return Voxels(
            voxels=points.new_zeros(0, max_points, num_feat),
            coords=torch.zeros(0, 3, dtype=torch.long, device=device),
            num_points=torch.zeros(0, dtype=torch.long, device=device),
        )

    key = (cell[:, 2] * ny + cell[:, 1]) * nx + cell[:, 0]
    uniq, inverse = torch.unique(key, return_inverse=True)
    n_uniq = int(uniq.numel())
    position = torch.arange(n_valid, device=device)
    first = torch.full((n_uniq,), n_valid, dtype=torch.long, device=device)
    first = first.scatter_reduce(0, inverse, position, reduce="amin", include_self=True)
    order = torch.argsort(first)  # voxel numbering by first appearance
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(n_uniq, device=device))
    vid = rank[inverse]  # [n_valid] voxel number of each kept point

    # slot of each point inside its voxel = number of earlier points of the same voxel
    sorted_vid, perm = torch.sort(vid, stable=True)
    counts = torch.bincount(vid, minlength=n_uniq)
    starts = torch.cumsum(counts, 0) - counts
    slot_sorted = torch.arange(n_valid, device=device) - starts[sorted_vid]
    slot = torch.empty_like(slot_sorted).scatter_(0, perm, slot_sorted)

    num_vox = min(n_uniq, max_voxels)
    keep = (vid < num_vox) & (slot < max_points)
    voxels = points.new_zeros(num_vox, max_points, num_feat)
    voxels[vid[keep], slot[keep]] = points[point_idx[keep]]
    first_cells = cell[first[order[:num_vox]]]  # (x, y, z) of each voxel
    coords = first_cells.flip(1).contiguous()
    num_points = counts[:num_vox].clamp(max=max_points)
    return Voxels(voxels=voxels, coords=coords, num_points=num_points)


def voxelize_batch(
    points: Tensor,
    voxel_size: Sequence[float],
    point_range: Sequence[float],
    max_points: int,
    max_voxels: int,
) -> BatchVoxels:
    """Voxelise every sample of points [B, P, C] (or a list of [P_b, C]) and prepend the batch
    index to the coordinates -> :class:`BatchVoxels` with coors [sum V, 4] (b, z, y, x)."""
    voxels, coors, counts = [], [], []
    for b, pts in enumerate(points):
        v = voxelize(pts, voxel_size, point_range, max_points, max_voxels)
        voxels.append(v.voxels)
        batch_col = torch.full_like(v.coords[:, :1], b)
        coors.append(torch.cat([batch_col, v.coords], dim=1))
        counts.append(v.num_points)
    return BatchVoxels(
        voxels=torch.cat(voxels), coors=torch.cat(coors), num_points=torch.cat(counts)
    )


def mean_voxel_features(
    voxels: Tensor, num_points: Tensor, num_features: int | None = None
) -> Tensor:
    """HardSimpleVFE: mean of the real points of each voxel.

    voxels [V, T, C], num_points [V] -> [V, num_features] (default C). Padding rows must be zero
    (as :func:`voxelize` leaves them).
    """
    feats = voxels if num_features is None else voxels[:, :, :num_features]
    return feats.sum(dim=1) / num_points.clamp(min=1).to(feats.dtype).unsqueeze(1)
