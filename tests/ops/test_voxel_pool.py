"""Voxel pooling: hand-worked cells (truncation quirk), fast path == reference (values and
gradients), and a 3D point seen by a camera pooling into the BEV cell that contains it."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from labeldistill import geometry
from labeldistill.config import GridConfig
from labeldistill.models.view_transform import frustum_geometry, make_frustum
from labeldistill.ops.voxel_pool import (
    VoxelGrid,
    pool_fn,
    voxel_pool,
    voxel_pool_reference,
    voxel_pool_scatter,
)

IMPLS = [voxel_pool_reference, voxel_pool]
PAPER_GRID = VoxelGrid.from_config(GridConfig())


def test_grid_from_config() -> None:
    assert PAPER_GRID.size == (128, 128, 1)
    assert PAPER_GRID.lower == (-51.2, -51.2, -5.0)
    assert PAPER_GRID.cell == (0.8, 0.8, 8.0)
    assert pool_fn("fast") is voxel_pool and pool_fn("reference") is voxel_pool_reference
    with pytest.raises(ValueError):
        pool_fn("cuda")


@pytest.mark.parametrize("impl", IMPLS)
def test_hand_worked_cells(impl) -> None:
    """Four points on a 4 x 3 x 1 grid of 1 m cells from (0, 0, 0); one camera, one pixel."""
    grid = VoxelGrid(lower=(0.0, 0.0, 0.0), cell=(1.0, 1.0, 1.0), size=(4, 3, 1))
    pts = torch.tensor(
        [
            [2.5, 1.5, 0.5],  # cell (y=1, x=2)
            [2.9, 1.1, 0.2],  # same cell
            [-0.5, 2.5, 0.5],  # x within one cell below the bound: .int() truncates to 0 -> (2, 0)
            [-1.5, 0.5, 0.5],  # x = -1.5 -> -1: outside
            [1.5, 0.5, 1.0],  # z = 1.0 -> cell 1 >= Z: outside
            [3.5, 3.0, 0.0],  # y = 3.0 -> cell 3 >= Y: outside
        ]
    )
    geom = pts.view(1, 1, 6, 1, 1, 3)
    depth = torch.tensor([0.5, 0.25, 2.0, 7.0, 7.0, 7.0]).view(1, 1, 6, 1, 1)
    context = torch.tensor([1.0, -2.0]).view(1, 1, 2, 1, 1)
    out = impl(geom, depth, context, grid)
    expected = torch.zeros(1, 2, 3, 4)
    expected[0, :, 1, 2] = torch.tensor([0.75, -1.5])
    expected[0, :, 2, 0] = torch.tensor([2.0, -4.0])
    torch.testing.assert_close(out, expected)


def _random_case(b: int, n: int, d: int, h: int, w: int, c: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    # About half the points fall outside the 12 x 10 x 2 grid (x, y in [-3, 15), z in [-1, 3)).
    xy = torch.rand(b, n, d, h, w, 2, generator=gen) * 18.0 - 3.0
    z = torch.rand(b, n, d, h, w, 1, generator=gen) * 4.0 - 1.0
    geom = torch.cat([xy, z], dim=-1)
    depth = torch.rand(b, n, d, h, w, generator=gen).softmax(dim=2)
    context = torch.randn(b, n, c, h, w, generator=gen)
    return geom, depth, context


def test_fast_matches_reference_values_and_gradients() -> None:
    grid = VoxelGrid(lower=(0.0, 0.0, 0.0), cell=(1.0, 1.0, 1.0), size=(12, 10, 2))
    geom, depth, context = _random_case(2, 3, 7, 4, 5, 6, seed=1)
    cell = ((geom - torch.tensor([0.0, 0.0, 0.0])) / 1.0).int()
    inside = (cell >= 0).all(-1) & (cell < torch.tensor([12, 10, 2])).all(-1)
    assert 0.2 < inside.float().mean() < 0.8  # both in- and out-of-grid points are exercised
    grad_out = torch.randn(2, 6, 10, 12, generator=torch.Generator().manual_seed(3))
    results = []
    for impl in IMPLS:
        dp = depth.clone().requires_grad_(True)
        cx = context.clone().requires_grad_(True)
        out = impl(geom, dp, cx, grid)
        out.backward(grad_out)
        results.append((out.detach(), dp.grad, cx.grad))
    (ref, ref_gd, ref_gc), (fast, fast_gd, fast_gc) = results
    assert ref.abs().sum() > 1.0
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_gd, ref_gd, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_gc, ref_gc, atol=1e-5, rtol=1e-5)
    # Points outside the grid get exactly zero depth gradient.
    assert torch.all(fast_gd[~inside] == 0)
    assert fast_gd[inside].abs().sum() > 0


def test_fast_gradcheck_float64() -> None:
    grid = VoxelGrid(lower=(0.0, 0.0, 0.0), cell=(1.0, 1.0, 1.0), size=(12, 10, 2))
    geom, depth, context = _random_case(1, 2, 3, 2, 3, 2, seed=5)
    dp = depth.double().requires_grad_(True)
    cx = context.double().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: voxel_pool(geom, a, b, grid), (dp, cx), fast_mode=True
    )


def test_fast_matches_reference_at_paper_grid() -> None:
    geom, depth, context = _random_case(1, 2, 16, 4, 11, 8, seed=2)
    geom = geom * 6.0 - 40.0  # spread over the 128 x 128 grid and beyond
    geom[..., 2] = geom[..., 2] / 6.0 + 40.0 - 5.0
    ref = voxel_pool_reference(geom, depth, context, PAPER_GRID)
    fast = voxel_pool(geom, depth, context, PAPER_GRID)
    assert ref.shape == (1, 8, 128, 128)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def _camera_case(ego_from_camera: np.ndarray, k3: np.ndarray, ida: np.ndarray, image_size, ijk):
    """Pool a one-hot frustum point (bin k, feature row i, column j) of one camera and return
    (BEV [C, Y, X], the 3D ego point it represents computed independently in float64)."""
    grid_cfg = GridConfig()
    frustum = make_frustum(image_size, 16, grid_cfg.d_bound)
    k, i, j = ijk
    u_aug, v_aug, d, _ = frustum[k, i, j].double().numpy()
    # Independent float64 back-projection: undo ida, unproject with K, to ego.
    u, v, _, _ = np.linalg.inv(ida) @ np.array([u_aug, v_aug, d, 1.0])
    p_cam = d * (np.linalg.inv(k3) @ np.array([u, v, 1.0]))
    p_ego = geometry.apply(ego_from_camera, p_cam[None])[0]
    # Round trip: the point projects back onto the pixel at depth d.
    uv, depth = geometry.project(k3, geometry.apply(geometry.invert(ego_from_camera), p_ego[None]))
    assert depth[0] == pytest.approx(d)
    np.testing.assert_allclose(uv[0], [u, v], atol=1e-6)

    k4 = np.eye(4)
    k4[:3, :3] = k3
    mats = [
        torch.tensor(m, dtype=torch.float32).view(1, 1, 4, 4) for m in (ego_from_camera, k4, ida)
    ]
    geom = frustum_geometry(frustum, *mats, torch.eye(4).view(1, 4, 4))
    dd, h, w = frustum.shape[:3]
    depth_probs = torch.zeros(1, 1, dd, h, w)
    depth_probs[0, 0, k, i, j] = 1.0
    context = torch.tensor([1.0, 3.0]).view(1, 1, 2, 1, 1).expand(1, 1, 2, h, w)
    outs = [impl(geom, depth_probs, context, PAPER_GRID)[0] for impl in IMPLS]
    torch.testing.assert_close(outs[0], outs[1])
    return outs[1], p_ego


def _expected_cell(p_ego: np.ndarray) -> tuple[int, int]:
    fx = (p_ego[0] + 51.2) / 0.8
    fy = (p_ego[1] + 51.2) / 0.8
    # Keep away from cell borders so float32 vs float64 cannot disagree.
    assert 0.05 < fx % 1 < 0.95 and 0.05 < fy % 1 < 0.95
    return math.floor(fy), math.floor(fx)


def _check_single_cell(bev: torch.Tensor, cell: tuple[int, int]) -> None:
    nonzero = torch.nonzero(bev[0]).tolist()
    assert nonzero == [list(cell)]
    torch.testing.assert_close(bev[:, cell[0], cell[1]], torch.tensor([1.0, 3.0]))


def test_hand_made_camera_point_lands_in_its_cell() -> None:
    """A forward-looking camera 1.5 m up at (1.0, 0.3): the frustum point of the centre column
    at 20 m depth is the ego point (21.0, 0.3 + lateral offset, 1.5 + vertical offset)."""
    image_size = (256, 704)
    u_center = 22 * 703 / 43  # column 22 of linspace(0, 703, 44)
    v_center = 8 * 255 / 15
    k3 = np.array([[500.0, 0.0, u_center], [0.0, 500.0, v_center], [0.0, 0.0, 1.0]])
    rot = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # cam z -> ego x
    ego_from_camera = geometry.transform(rot, [1.0, 0.3, 1.5])
    k = round((20.0 - 2.0) / 0.5)
    bev, p_ego = _camera_case(ego_from_camera, k3, np.eye(4), image_size, (k, 8, 22))
    np.testing.assert_allclose(p_ego, [21.0, 0.3, 1.5], atol=1e-4)
    assert _expected_cell(p_ego) == (64, 90)  # (0.3 + 51.2) / 0.8 = 64.4, (21 + 51.2) / 0.8 = 90.25
    _check_single_cell(bev, (64, 90))


def test_real_camera_point_lands_in_its_cell(fixture_root) -> None:
    """CAM_FRONT_LEFT of the real fixture with the test-time resize/crop of 1600x900 -> 704x256."""
    with open(fixture_root / "infos.pkl", "rb") as f:
        infos = pickle.load(f)
    cam = infos[0]["cam_infos"]["CAM_FRONT_LEFT"]
    calib = cam["calibrated_sensor"]
    ego_from_camera = geometry.pose_matrix(calib)
    k3 = np.asarray(calib["camera_intrinsic"], dtype=np.float64)
    scale = 704 / 1600
    ida = np.eye(4)
    ida[0, 0] = ida[1, 1] = scale
    ida[1, 3] = -(900 * scale - 256)  # crop the top rows
    checked = 0
    for k, i, j in [(36, 9, 10), (10, 10, 30), (80, 8, 22), (5, 12, 3)]:
        bev, p_ego = _camera_case(ego_from_camera, k3, ida, (256, 704), (k, i, j))
        fx, fy = (p_ego[0] + 51.2) / 0.8, (p_ego[1] + 51.2) / 0.8
        assert 0 <= fx < 128 and 0 <= fy < 128 and -5.0 <= p_ego[2] < 3.0
        if not (0.05 < fx % 1 < 0.95 and 0.05 < fy % 1 < 0.95):
            continue  # too close to a cell border for a float32 comparison
        _check_single_cell(bev, _expected_cell(p_ego))
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
def test_fast_matches_reference_under_autocast(amp_dtype) -> None:
    """Issue 13 item 1: under (CPU-stand-in) autocast the sparse products still run in fp32
    (before: NotImplementedError on CPU, an fp16 SpMM on CUDA): forward and gradients equal the
    fp32 reference, the output stays fp32."""
    grid = VoxelGrid(lower=(0.0, 0.0, 0.0), cell=(1.0, 1.0, 1.0), size=(12, 10, 2))
    geom, depth, context = _random_case(2, 3, 7, 4, 5, 6, seed=11)
    grad_out = torch.randn(2, 6, 10, 12, generator=torch.Generator().manual_seed(4))
    results = []
    for impl, amp in ((voxel_pool_reference, False), (voxel_pool, True)):
        dp = depth.clone().requires_grad_(True)
        cx = context.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=amp_dtype, enabled=amp):
            out = impl(geom, dp, cx, grid)
        assert out.dtype == torch.float32
        out.backward(grad_out)
        results.append((out.detach(), dp.grad, cx.grad))
    (ref, ref_gd, ref_gc), (fast, fast_gd, fast_gc) = results
    assert ref.abs().sum() > 1.0
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_gd, ref_gd, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_gc, ref_gc, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
def test_fast_half_inputs_accumulate_in_fp32(amp_dtype) -> None:
    """Half-precision depth and context (what an autocast DepthNet emits): the fast path sums
    in fp32 and returns the half dtype; equals the fp32 reference of the same (rounded) inputs
    rounded once, and its gradients come back in the input dtypes."""
    grid = VoxelGrid(lower=(0.0, 0.0, 0.0), cell=(1.0, 1.0, 1.0), size=(12, 10, 2))
    geom, depth, context = _random_case(1, 2, 9, 4, 5, 3, seed=12)
    dh = depth.to(amp_dtype).requires_grad_(True)
    ch = context.to(amp_dtype).requires_grad_(True)
    with torch.autocast("cpu", dtype=amp_dtype):
        out = voxel_pool(geom, dh, ch, grid)
    assert out.dtype == amp_dtype
    ref = voxel_pool_reference(geom, dh.detach().float(), ch.detach().float(), grid)
    torch.testing.assert_close(out.float(), ref.to(amp_dtype).float(), atol=0, rtol=0)
    out.float().sum().backward()
    assert dh.grad.dtype == amp_dtype and ch.grad.dtype == amp_dtype
    assert torch.isfinite(dh.grad.float()).all() and dh.grad.float().abs().sum() > 0


def test_fast_pooling_has_one_data_dependent_op() -> None:
    """Item 11: the fast pooling's only host synchronisation on CUDA is the size of
    ``torch.unique`` (before: also ``nonzero``, ``bincount`` and host-built constants)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.counts: dict[str, int] = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            self.counts[name] = self.counts.get(name, 0) + 1
            return func(*args, **(kwargs or {}))

    grid = VoxelGrid(lower=(0.0, 0.0, 0.0), cell=(1.0, 1.0, 1.0), size=(12, 10, 2))
    geom, depth, context = _random_case(1, 2, 5, 3, 4, 3, seed=13)
    depth.requires_grad_(True)
    with Ops() as ops:
        voxel_pool(geom, depth, context, grid).sum().backward()
    syncing = {"nonzero", "bincount", "_local_scalar_dense", "masked_select", "item"}
    assert not (set(ops.counts) & syncing), set(ops.counts) & syncing
    assert sum(v for k, v in ops.counts.items() if k.startswith("_unique")) == 1, ops.counts


def test_scatter_pooling_equals_reference() -> None:
    g = torch.Generator().manual_seed(0)
    grid = VoxelGrid(lower=(-4.0, -4.0, -1.0), cell=(1.0, 1.0, 2.0), size=(8, 8, 1))
    geom = torch.rand(2, 3, 5, 4, 6, 3, generator=g) * 12 - 6  # many points outside the grid
    depth = torch.rand(2, 3, 5, 4, 6, generator=g)
    ctx = torch.randn(2, 3, 7, 4, 6, generator=g)
    ref = voxel_pool_reference(geom, depth, ctx, grid)
    ours = voxel_pool_scatter(geom, depth, ctx, grid)
    assert ours.shape == (2, 7, 8, 8)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert ref.abs().sum() > 0


def test_scatter_pooling_gradients_equal_reference() -> None:
    g = torch.Generator().manual_seed(3)
    grid = VoxelGrid(lower=(-4.0, -4.0, -1.0), cell=(1.0, 1.0, 2.0), size=(8, 8, 1))
    geom = torch.rand(1, 2, 5, 4, 6, 3, generator=g) * 12 - 6
    grads = []
    for fn in (voxel_pool_reference, voxel_pool_scatter):
        depth = torch.rand(1, 2, 5, 4, 6, generator=torch.Generator().manual_seed(4))
        ctx = torch.randn(1, 2, 7, 4, 6, generator=torch.Generator().manual_seed(5))
        depth.requires_grad_(True)
        ctx.requires_grad_(True)
        (fn(geom, depth, ctx, grid) ** 2).sum().backward()
        grads.append((depth.grad, ctx.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
