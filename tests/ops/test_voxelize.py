"""Hard voxelisation against hand-made cases, and against a per-point loop reference."""

from __future__ import annotations

import numpy as np
import torch

from labeldistill.ops.voxelize import grid_size, mean_voxel_features, voxelize, voxelize_batch

# 4 x 4 x 2 grid of 1 m voxels over [0, 4) x [0, 4) x [0, 2)
RANGE = (0.0, 0.0, 0.0, 4.0, 4.0, 2.0)
SIZE = (1.0, 1.0, 1.0)


def _pts(rows: list[list[float]]) -> torch.Tensor:
    """(x, y, z) rows -> [P, 5] with feature 3 = row number, feature 4 = 10 * row number."""
    out = []
    for i, (x, y, z) in enumerate(rows):
        out.append([x, y, z, float(i), 10.0 * i])
    return torch.tensor(out, dtype=torch.float32)


def _loop_reference(points, voxel_size, point_range, max_points, max_voxels):
    """Per-point loop with mmcv's hard-voxelisation semantics (readable reference)."""
    nx, ny, nz = grid_size(point_range, voxel_size)
    index: dict[tuple[int, int, int], int] = {}
    voxels: list[list[list[float]]] = []
    coords: list[tuple[int, int, int]] = []
    for p in points.tolist():
        c = [
            int(
                np.floor(
                    (np.float32(p[i]) - np.float32(point_range[i])) / np.float32(voxel_size[i])
                )
            )
            for i in range(3)
        ]
        if not (0 <= c[0] < nx and 0 <= c[1] < ny and 0 <= c[2] < nz):
            continue
        key = (c[2], c[1], c[0])
        if key not in index:
            if len(voxels) >= max_voxels:
                continue
            index[key] = len(voxels)
            voxels.append([])
            coords.append(key)
        v = voxels[index[key]]
        if len(v) < max_points:
            v.append(p)
    return voxels, coords


def test_grid_size_paper_config():
    assert grid_size((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.1, 0.1, 0.2)) == (1024, 1024, 40)


def test_order_coords_and_cap_per_voxel():
    pts = _pts(
        [
            [2.5, 1.5, 0.5],  # voxel A (z0, y1, x2)
            [0.5, 0.5, 1.5],  # voxel B (z1, y0, x0)
            [2.1, 1.9, 0.1],  # A
            [2.9, 1.1, 0.9],  # A (third point: over the cap of 2)
            [0.2, 0.3, 1.2],  # B
            [3.5, 3.5, 0.5],  # voxel C (z0, y3, x3)
        ]
    )
    v = voxelize(pts, SIZE, RANGE, max_points=2, max_voxels=10)
    assert v.coords.tolist() == [[0, 1, 2], [1, 0, 0], [0, 3, 3]]
    assert v.num_points.tolist() == [2, 2, 1]
    # first max_points points in input order (feature 3 = input row)
    assert v.voxels[:, :, 3].tolist() == [[0.0, 2.0], [1.0, 4.0], [5.0, 0.0]]
    # padding rows are zero
    assert torch.equal(v.voxels[2, 1], torch.zeros(5))
    assert v.voxels.shape == (3, 2, 5)
    assert v.coords.dtype == torch.long


def test_voxel_cap_keeps_first_voxels_and_drops_points_of_later_ones():
    pts = _pts(
        [[0.5, 0.5, 0.5], [1.5, 0.5, 0.5], [2.5, 0.5, 0.5], [0.6, 0.6, 0.6], [2.4, 0.4, 0.4]]
    )
    v = voxelize(pts, SIZE, RANGE, max_points=5, max_voxels=2)
    assert v.coords.tolist() == [[0, 0, 0], [0, 0, 1]]
    assert v.num_points.tolist() == [2, 1]
    assert v.voxels[0, :2, 3].tolist() == [0.0, 3.0]
    assert v.voxels[1, 0, 3].item() == 1.0
    # points 2 and 4 (third voxel) are gone
    assert set(v.voxels[:, :, 3].flatten().tolist()) == {0.0, 1.0, 3.0}


def test_range_upper_bound_excluded_lower_bound_included_and_padding_dropped():
    pts = _pts(
        [
            [4.0, 0.5, 0.5],  # x exactly on the upper bound: out
            [0.0, 0.0, 0.0],  # on the lower bound: in, voxel (0, 0, 0)
            [-999.0, -999.0, -999.0],  # padding row
            [3.999, 3.999, 1.999],  # last voxel
            [0.5, 0.5, 2.0],  # z on the upper bound: out
            [0.5, -0.001, 0.5],  # just below y min: out
        ]
    )
    v = voxelize(pts, SIZE, RANGE, max_points=3, max_voxels=10)
    assert v.coords.tolist() == [[0, 0, 0], [1, 3, 3]]
    assert v.voxels[:, 0, 3].tolist() == [1.0, 3.0]
    assert v.num_points.tolist() == [1, 1]


def test_all_points_out_of_range_gives_empty_voxels():
    pts = torch.full((7, 5), -999.0)
    v = voxelize(pts, SIZE, RANGE, max_points=3, max_voxels=10)
    assert v.voxels.shape == (0, 3, 5) and v.coords.shape == (0, 3) and v.num_points.shape == (0,)


def test_matches_loop_reference_on_random_cloud():
    g = torch.Generator().manual_seed(3)
    pts = torch.rand(3000, 5, generator=g) * torch.tensor(
        [10.0, 10.0, 4.0, 1.0, 1.0]
    ) - torch.tensor([1.0, 1.0, 0.5, 0.0, 0.0])
    pts = torch.cat([pts, pts[:500] + 0.01])  # dense voxels to hit the per-voxel cap
    size, rng = (0.5, 0.5, 0.5), (0.0, 0.0, 0.0, 8.0, 8.0, 3.0)
    v = voxelize(pts, size, rng, max_points=4, max_voxels=700)
    ref_vox, ref_coords = _loop_reference(pts, size, rng, 4, 700)
    assert v.coords.tolist() == [list(c) for c in ref_coords]
    assert v.num_points.tolist() == [len(r) for r in ref_vox]
    expected = torch.zeros(len(ref_vox), 4, 5)
    for i, rows in enumerate(ref_vox):
        expected[i, : len(rows)] = torch.tensor(rows)
    assert torch.equal(v.voxels, expected)


def test_batch_prepends_index_and_mean_vfe():
    a = _pts([[0.5, 0.5, 0.5], [0.7, 0.2, 0.1], [1.5, 0.5, 0.5]])
    b = _pts([[3.5, 3.5, 1.5], [-999.0, -999.0, -999.0], [-999.0, -999.0, -999.0]])
    bv = voxelize_batch(torch.stack([a, b]), SIZE, RANGE, max_points=4, max_voxels=10)
    assert bv.coors.tolist() == [[0, 0, 0, 0], [0, 0, 0, 1], [1, 1, 3, 3]]
    mean = mean_voxel_features(bv.voxels, bv.num_points)
    torch.testing.assert_close(mean[0], torch.tensor([0.6, 0.35, 0.3, 0.5, 5.0]))
    torch.testing.assert_close(mean[1], a[2])
    torch.testing.assert_close(mean[2], b[0])
    assert mean_voxel_features(bv.voxels, bv.num_points, num_features=3).shape == (3, 3)


def test_deterministic_and_order_sensitive():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(500, 5, generator=g) * 4
    v1 = voxelize(pts, SIZE, RANGE, 3, 100)
    v2 = voxelize(pts.clone(), SIZE, RANGE, 3, 100)
    assert torch.equal(v1.voxels, v2.voxels) and torch.equal(v1.coords, v2.coords)
    rev = voxelize(pts.flip(0), SIZE, RANGE, 3, 100)
    # reversed input: same voxel set, first-appearance order changes
    assert sorted(map(tuple, rev.coords.tolist())) == sorted(map(tuple, v1.coords.tolist()))
    assert rev.coords.tolist() != v1.coords.tolist()
