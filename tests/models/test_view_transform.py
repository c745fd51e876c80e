"""Frustum, frustum geometry through ida / intrinsics / extrinsics / bda (hand-worked), and the
LSS backbone: pooling implementations agree, previous frames without gradient and conditioned
on the key frame's camera vector (quirk 20)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from labeldistill.config import (
    GridConfig,
    StudentConfig,
    ViewTransformConfig,
)
from labeldistill.models.depth_net import camera_vector
from labeldistill.models.view_transform import (
    LSSBackbone,
    depth_bins,
    frustum_geometry,
    make_frustum,
)


def test_depth_bins_and_frustum() -> None:
    d = depth_bins((2.0, 58.0, 0.5))
    assert d.shape == (112,) and d[0] == 2.0 and d[1] == 2.5 and d[-1] == 57.5
    f = make_frustum((256, 704), 16, (2.0, 58.0, 0.5))
    assert f.shape == (112, 16, 44, 4)
    torch.testing.assert_close(f[0, 0, :, 0], torch.linspace(0, 703, 44))
    torch.testing.assert_close(f[0, :, 0, 1], torch.linspace(0, 255, 16))
    assert f[5, 3, 7, 2] == 4.5 and torch.all(f[..., 3] == 1)
    assert f[0, 15, 43, 0] == 703 and f[0, 15, 43, 1] == 255


def _camera(b: int = 1, n: int = 1):
    """Forward-looking camera at ego (1, 2, 1.5): cam z -> ego x, cam x -> -y, cam y -> -z."""
    e = torch.eye(4)
    e[:3, :3] = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    e[:3, 3] = torch.tensor([1.0, 2.0, 1.5])
    k = torch.eye(4)
    k[0, 0], k[1, 1], k[0, 2], k[1, 2] = 100.0, 50.0, 10.0, 5.0
    return e.expand(b, n, 4, 4), k.expand(b, n, 4, 4)


def test_geometry_by_hand() -> None:
    frustum = torch.tensor([[[[30.0, 15.0, 4.0, 1.0]]]])  # one point: pixel (30, 15), depth 4 m
    e, k = _camera()
    eye = torch.eye(4).view(1, 1, 4, 4)
    geom = frustum_geometry(frustum, e, k, eye, torch.eye(4).view(1, 4, 4))
    # camera: x = (30 - 10) * 4 / 100 = 0.8, y = (15 - 5) * 4 / 50 = 0.8, z = 4
    # ego: (1 + 4, 2 - 0.8, 1.5 - 0.8)
    torch.testing.assert_close(geom[0, 0, 0, 0, 0], torch.tensor([5.0, 1.2, 0.7]))

    # ida: image resized x2 then shifted by (-6, +4): the augmented pixel (54, 34) is the original
    # pixel (30, 15) -> same 3D point.
    ida = torch.eye(4)
    ida[0, 0] = ida[1, 1] = 2.0
    ida[0, 3], ida[1, 3] = -6.0, 4.0
    aug = torch.tensor([[[[54.0, 34.0, 4.0, 1.0]]]])
    geom = frustum_geometry(aug, e, k, ida.view(1, 1, 4, 4), torch.eye(4).view(1, 4, 4))
    torch.testing.assert_close(geom[0, 0, 0, 0, 0], torch.tensor([5.0, 1.2, 0.7]))

    # bda: rotate 90 degrees about z and flip y afterwards: (x, y, z) -> (-y, x, z) -> (-y, -x, z)
    rot = torch.tensor(
        [[math.cos(math.pi / 2), -1.0, 0.0], [1.0, math.cos(math.pi / 2), 0.0], [0, 0, 1.0]]
    )
    flip = torch.diag(torch.tensor([1.0, -1.0, 1.0]))
    bda = torch.eye(4)
    bda[:3, :3] = flip @ rot
    geom = frustum_geometry(frustum, e, k, eye, bda.view(1, 4, 4))
    torch.testing.assert_close(geom[0, 0, 0, 0, 0], torch.tensor([-1.2, -5.0, 0.7]))


def test_lss_backbone_fast_equals_reference_and_frames(
    tiny_student_config, tiny_grid, camera_inputs
) -> None:
    fast = LSSBackbone(tiny_student_config("fast"), tiny_grid, (32, 96)).eval()
    ref = LSSBackbone(tiny_student_config("reference"), tiny_grid, (32, 96)).eval()
    ref.load_state_dict(fast.state_dict())
    imgs, e, k, ida, bda = camera_inputs(2, 2, 2)
    out = fast(imgs, e, k, ida, bda)
    assert out.bev.shape == (2, 12, 32, 32)
    assert out.depth.shape == (4, 16, 2, 6)
    torch.testing.assert_close(out.depth.sum(dim=1), torch.ones(4, 2, 6))
    assert out.bev.abs().sum() > 0
    torch.testing.assert_close(ref(imgs, e, k, ida, bda).bev, out.bev, atol=1e-5, rtol=1e-4)

    # Frame 1 = the single-frame pipeline on frame-1 images and matrices, but with the DepthNet
    # conditioned on frame-0 matrices (quirk 20).
    with torch.no_grad():
        cam0 = camera_vector(e[:, 0], k[:, 0], ida[:, 0], bda)
        bev1, _ = fast._frame(imgs[:, 1], (e[:, 1], k[:, 1], ida[:, 1]), bda, cam0)
        cam1 = camera_vector(e[:, 1], k[:, 1], ida[:, 1], bda)
        bev1_own, _ = fast._frame(imgs[:, 1], (e[:, 1], k[:, 1], ida[:, 1]), bda, cam1)
    torch.testing.assert_close(out.bev[:, 6:], bev1)
    assert not torch.allclose(bev1_own, bev1)  # frame-1 matrices differ: the quirk matters


def test_previous_frames_carry_no_gradient(tiny_student_config, tiny_grid, camera_inputs) -> None:
    model = LSSBackbone(tiny_student_config(), tiny_grid, (32, 96)).train()
    imgs, e, k, ida, bda = camera_inputs(1, 2, 2)
    out = model(imgs, e, k, ida, bda)
    out.bev[:, 6:].sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is None or torch.all(g == 0) for g in grads)
    model.zero_grad(set_to_none=True)
    out = model(imgs, e, k, ida, bda)
    out.bev[:, :6].sum().backward()
    assert model.depth_net.depth_conv[5].weight.grad.abs().sum() > 0
    assert model.img_backbone.layer1[0].conv1.weight.grad.abs().sum() > 0


def test_published_buffers() -> None:
    model = LSSBackbone(StudentConfig(), GridConfig(), (256, 704))
    sd = model.state_dict()
    torch.testing.assert_close(sd["voxel_size"], torch.tensor([0.8, 0.8, 8.0]))
    torch.testing.assert_close(sd["voxel_coord"], torch.tensor([-50.8, -50.8, -1.0]))
    assert sd["voxel_num"].tolist() == [128, 128, 1] and sd["voxel_num"].dtype == torch.int64
    assert sd["frustum"].shape == (112, 16, 44, 4)


# --------------------------------------------------------------------------------------------
# geometry precision (METHOD.md 14 quirk 28; issue 13 item 2)
# --------------------------------------------------------------------------------------------


def _fixture_rig(fixture_root) -> tuple[torch.Tensor, ...]:
    """Matrices of the real one-sample rig at the test-time ida (resize 0.44, crop (0, 140))."""
    import pickle

    from labeldistill.config import DataConfig
    from labeldistill.data.dataset import NuScenesDataset

    with open(fixture_root / "infos.pkl", "rb") as f:
        infos = pickle.load(f)
    cfg = DataConfig(key_idxes=(), return_depth=False)
    s = NuScenesDataset(cfg, infos, fixture_root, train=False)[0]
    return s.ego_from_camera[None, 0], s.intrinsics[None, 0], s.ida[None, 0], s.bda[None]


def test_faithful_geometry_drops_the_fp16_overflow_on_the_fixture_rig(fixture_root) -> None:
    import numpy as np

    from labeldistill.models.view_transform import DROPPED_POINT
    from labeldistill.ops.voxel_pool import VoxelGrid, voxel_pool_reference

    e, k, ida, bda = _fixture_rig(fixture_root)
    assert ida[0, 0, 0, 0] == pytest.approx(0.44) and ida[0, 0, 1, 3] == pytest.approx(-140.0)
    frustum = make_frustum((256, 704), 16, (2.0, 58.0, 0.5))
    g32 = frustum_geometry(frustum, e, k, ida, bda, precision="fp32")
    g16 = frustum_geometry(frustum, e, k, ida, bda, precision="fp16_faithful")
    dropped = (g16 == DROPPED_POINT).all(-1)[0]  # [N, D, h, w]
    assert torch.isfinite(g32).all() and not (g32 == DROPPED_POINT).any()

    # Independent reference in numpy: the fp16 matmul sees ida^-1 and u rounded to fp16 and
    # rounds u_orig = inv[0, 0] u + inv[0, 3] to fp16; the product with d overflows fp16
    # (-> inf) from 65520 on.
    def r16(x):
        return np.asarray(x, dtype=np.float64).astype(np.float16).astype(np.float64)

    u = frustum[..., 0].double().numpy()
    d = frustum[..., 2].double().numpy()
    a = ida[0].double().numpy()
    inv = np.linalg.inv(a)
    u16 = r16(
        r16(inv[:, 0, 0, None, None, None]) * r16(u)[None] + r16(inv[:, 0, 3, None, None, None])
    )
    expected = u16 * d[None] >= 65520.0
    u_orig = (u[None] - a[:, 0, 3, None, None, None]) / a[:, 0, 0, None, None, None]
    assert np.array_equal(dropped.numpy(), expected)
    # The rule "u_orig * d > 65504" holds except in the rounding band (65504, 65520).
    product = u_orig * d[None]
    band = (product > 65504) & (product < 65520)
    assert np.array_equal(dropped.numpy() | band, (product > 65504) | band)
    assert int(dropped.sum()) == 24096 and 0 < int(band.sum()) <= 6 * 16 * 2

    # Kept points equal fp32 up to fp16 rounding; METHOD.md quirk 28's figures: 1.8 % of the
    # in-grid frustum points dropped, 1.9 % change cell.
    keep = ~dropped
    assert (g16[0][keep] - g32[0][keep]).abs().max() < 0.25
    grid = VoxelGrid.from_config(GridConfig())
    lower = torch.tensor(grid.lower)
    cell = torch.tensor(grid.cell)
    idx32 = ((g32[0] - lower) / cell).int()
    idx16 = ((g16[0] - lower) / cell).int()
    size = torch.tensor(grid.size)
    in32 = ((idx32 >= 0) & (idx32 < size)).all(-1)
    in16 = ((idx16 >= 0) & (idx16 < size)).all(-1)
    assert not in16[dropped].any()
    assert (in32 & ~in16).sum() / in32.sum() == pytest.approx(0.0177, abs=5e-4)
    changed = in32 & in16 & (idx32 != idx16).any(-1)
    assert changed.sum() / in32.sum() == pytest.approx(0.0184, abs=5e-4)

    # The pooling drops those points: a constant feature counts the pooled points.
    n, dd, h, w = dropped.shape
    ones_d, ones_c = torch.ones(1, n, dd, h, w), torch.ones(1, n, 1, h, w)
    pooled16 = voxel_pool_reference(g16, ones_d, ones_c, grid).sum()
    pooled32 = voxel_pool_reference(g32, ones_d, ones_c, grid).sum()
    assert pooled16 == in16.sum() and pooled32 == in32.sum() and pooled16 < pooled32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("precision", ["fp32", "fp16_faithful"])
def test_geometry_ignores_the_ambient_autocast(dtype: torch.dtype, precision: str) -> None:
    # Under bf16-mixed the geometry must never be computed in bf16 (issue 13 item 2): the
    # result under CPU autocast is bit-identical to the one without.
    e, k = _camera()
    ida = torch.eye(4)
    ida[0, 0] = ida[1, 1] = 0.44
    ida[1, 3] = -140.0
    frustum = make_frustum((256, 704), 16, (2.0, 58.0, 0.5))
    args = (frustum, e, k, ida.view(1, 1, 4, 4), torch.eye(4).view(1, 4, 4))
    plain = frustum_geometry(*args, precision=precision)
    with torch.autocast("cpu", dtype=dtype):
        mixed = frustum_geometry(*args, precision=precision)
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed, plain)


def test_geometry_precision_is_a_config_value(tiny_student_config, tiny_grid) -> None:
    from labeldistill.config import load_config
    from labeldistill.errors import ConfigError

    assert ViewTransformConfig().geometry_precision == "fp32"
    for name in (
        "bevdepth_r50_256x704_128x128_e24_2key",
        "labeldistill_r50_128x128_e24_2key",
        "labeldistill_r50_128x128_e24_4key",
    ):
        assert load_config(name).student.view_transform.geometry_precision == "fp16_faithful"
    assert load_config("bevdepth_tiny").student.view_transform.geometry_precision == "fp32"
    cfg = tiny_student_config()
    bad = dataclasses.replace(
        cfg, view_transform=dataclasses.replace(cfg.view_transform, geometry_precision="bf16")
    )
    with pytest.raises(ConfigError, match="geometry_precision"):
        LSSBackbone(bad, tiny_grid, (32, 96))
    assert LSSBackbone(cfg, tiny_grid, (32, 96)).geometry_precision == "fp32"


@pytest.mark.parametrize("precision", ["fp32", "fp16_faithful"])
def test_lss_backbone_pools_on_the_configured_geometry_under_bf16_autocast(
    precision: str, tiny_student_config, tiny_grid, camera_inputs
) -> None:
    # The backbone hands the pooling the geometry of its configured precision, bit-identical
    # to the one computed outside autocast, while the image network runs in bf16.
    cfg = tiny_student_config()
    cfg = dataclasses.replace(
        cfg,
        view_transform=dataclasses.replace(cfg.view_transform, geometry_precision=precision),
        depth_net=dataclasses.replace(cfg.depth_net, use_dcn=False),  # no bf16 DCN on CPU
    )
    net = LSSBackbone(cfg, tiny_grid, (32, 96)).eval()
    imgs, e, k, ida, bda = camera_inputs(1, 1, 2)
    seen = []

    def pool(geom, depth, context, grid):
        seen.append((geom, depth.dtype, context.dtype))
        b, n, c = context.shape[:3]
        return context.new_zeros(b, c, grid.size[1], grid.size[0])

    net.pool = pool
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        net(imgs, e, k, ida, bda)
    ((geom, depth_dtype, context_dtype),) = seen
    assert context_dtype == torch.bfloat16  # the image network did run under autocast
    # ... but the depth softmax is float32, as CUDA autocast does it: bf16 probabilities reach
    # exactly 1.0 / 0.0, where the depth loss's clamped log has no gradient
    assert depth_dtype == torch.float32
    ref = frustum_geometry(net.frustum, e[:, 0], k[:, 0], ida[:, 0], bda, precision=precision)
    assert geom.dtype == torch.float32 and torch.equal(geom, ref)


def test_faithful_emulation_equals_a_real_fp16_computation(fixture_root) -> None:
    # The published geometry under 16-mixed: inverses in fp32, every matmul and product in fp16.
    # Run here with real half tensors on CPU: the emulation gives the same values bit for bit,
    # and the overflowed points are NaN in all three coordinates (0 * inf in the later matmuls).
    from labeldistill.models.view_transform import DROPPED_POINT

    e, k, ida, bda = _fixture_rig(fixture_root)
    frustum = make_frustum((256, 704), 16, (2.0, 58.0, 0.5))
    h = torch.float16
    b, n = ida.shape[:2]
    pts = frustum.to(h).view(1, 1, *frustum.shape, 1)
    pts = torch.inverse(ida).to(h).view(b, n, 1, 1, 1, 4, 4) @ pts
    pts = torch.cat([pts[..., :2, :] * pts[..., 2:3, :], pts[..., 2:, :]], dim=-2)
    combine = e.to(h) @ torch.inverse(k).to(h)
    pts = combine.view(b, n, 1, 1, 1, 4, 4) @ pts
    real = (bda.to(h).view(b, 1, 1, 1, 1, 4, 4) @ pts)[..., :3, 0].float()
    emulated = frustum_geometry(frustum, e, k, ida, bda, precision="fp16_faithful")
    overflow = ~torch.isfinite(real).all(-1)
    assert int(overflow.sum()) == 24096 and torch.isnan(real[overflow]).all()
    assert torch.equal((emulated == DROPPED_POINT).all(-1), overflow)
    assert torch.equal(emulated[~overflow], real[~overflow])
