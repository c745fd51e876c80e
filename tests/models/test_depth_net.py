"""DepthNet (METHOD.md 4.2): the 27-value camera vector, output shapes, DCN = grouped conv at
zero offsets, SE gating, ASPP and the published state-dict names and shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from labeldistill.config import DepthNetConfig
from labeldistill.models.depth_net import ASPP, DeformConv2dPack, DepthNet, SELayer, camera_vector


def _mats(b: int, n: int) -> tuple[torch.Tensor, ...]:
    e = torch.arange(b * n * 16, dtype=torch.float32).view(b, n, 4, 4) + 1000.0
    k = torch.eye(4).repeat(b, n, 1, 1)
    k[..., 0, 0], k[..., 1, 1], k[..., 0, 2], k[..., 1, 2] = 1266.0, 1265.0, 816.0, 491.0
    ida = torch.arange(b * n * 16, dtype=torch.float32).view(b, n, 4, 4) / 100.0
    bda = torch.tensor(
        [[0.9, -0.1, 0.0, 0.0], [0.2, 0.8, 0.0, 0.0], [0.0, 0.0, 1.05, 0.0], [0, 0, 0, 1]]
    )
    return e, k, ida, bda.expand(b, 4, 4).clone()


def test_camera_vector_contents() -> None:
    e, k, ida, bda = _mats(2, 3)
    v = camera_vector(e, k, ida, bda)
    assert v.shape == (2, 3, 27)
    a = ida[1, 2]
    expected = [1266.0, 1265.0, 816.0, 491.0]
    expected += [a[0, 0], a[0, 1], a[0, 3], a[1, 0], a[1, 1], a[1, 3]]
    expected += [0.9, -0.1, 0.2, 0.8, 1.05]
    expected += e[1, 2, :3, :4].reshape(-1).tolist()
    torch.testing.assert_close(v[1, 2], torch.tensor([float(x) for x in expected]))
    # e.g. ida[0, 3] of camera (1, 2) is element 3 of its row 0: (1 * 3 + 2) * 16 + 3 -> /100
    assert v[1, 2, 6].item() == pytest.approx((5 * 16 + 3) / 100.0)
    assert v[1, 2, 15].item() == e[1, 2, 0, 0].item() and v[1, 2, 26].item() == e[1, 2, 2, 3].item()


def test_output_shapes_and_softmax_ready() -> None:
    net = DepthNet(DepthNetConfig(mid_channels=32, dcn_groups=4), 48, 10, 28).eval()
    x = torch.randn(6, 48, 4, 12)
    e, k, ida, bda = _mats(1, 6)
    out = net(x, camera_vector(e, k, ida, bda))
    assert out.depth_logits.shape == (6, 28, 4, 12)
    assert out.context.shape == (6, 10, 4, 12)
    assert torch.isfinite(out.depth_logits).all() and torch.isfinite(out.context).all()


def test_depth_net_conditions_on_camera_vector() -> None:
    net = DepthNet(DepthNetConfig(mid_channels=16, use_aspp=False, use_dcn=False), 16, 4, 8).eval()
    x = torch.randn(2, 16, 2, 3)
    e, k, ida, bda = _mats(1, 2)
    a = net(x, camera_vector(e, k, ida, bda))
    k2 = k.clone()
    k2[..., 0, 0] = 500.0
    b = net(x, camera_vector(e, k2, ida, bda))
    assert not torch.allclose(a.context, b.context) and not torch.allclose(
        a.depth_logits, b.depth_logits
    )
    assert isinstance(net.depth_conv[3], torch.nn.Identity) and isinstance(
        net.depth_conv[4], torch.nn.Identity
    )


def test_dcn_with_zero_offsets_is_grouped_conv_and_learns_offsets() -> None:
    dcn = DeformConv2dPack(16, 8, groups=4)
    x = torch.randn(2, 16, 5, 7, requires_grad=True)
    y = dcn(x)
    torch.testing.assert_close(
        y, F.conv2d(x, dcn.weight, padding=1, groups=4), atol=1e-5, rtol=1e-5
    )
    assert dcn.weight.shape == (8, 4, 3, 3) and dcn.conv_offset.weight.shape == (18, 16, 3, 3)
    assert torch.all(dcn.conv_offset.weight == 0) and torch.all(dcn.conv_offset.bias == 0)
    y.sum().backward()
    assert dcn.conv_offset.weight.grad is not None and dcn.conv_offset.weight.grad.abs().sum() > 0


def test_se_layer_gate() -> None:
    se = SELayer(3)
    for conv in (se.conv_reduce, se.conv_expand):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    x = torch.randn(1, 3, 2, 2)
    torch.testing.assert_close(se(x, torch.randn(1, 3, 1, 1)), x * 0.5)  # sigmoid(0) = 0.5


def test_aspp_global_branch_and_shapes() -> None:
    aspp = ASPP(8, 4).eval()
    x = torch.randn(2, 8, 6, 10)
    assert aspp(x).shape == (2, 8, 6, 10)
    # The pooled branch is constant over space (bilinear upsampling of a 1x1 map).
    pooled = aspp.global_avg_pool(x)
    up = F.interpolate(pooled, size=(6, 10), mode="bilinear", align_corners=True)
    torch.testing.assert_close(up, pooled.expand(2, 4, 6, 10))
    assert aspp.aspp2.atrous_conv.dilation == (6, 6) and aspp.aspp4.atrous_conv.padding == (18, 18)


def test_published_state_dict_names_and_shapes() -> None:
    net = DepthNet(DepthNetConfig(), 512, 150, 112)
    sd = net.state_dict()
    expected = {
        "reduce_conv.0.weight": (512, 512, 3, 3),
        "reduce_conv.0.bias": (512,),
        "reduce_conv.1.running_var": (512,),
        "context_conv.weight": (150, 512, 1, 1),
        "context_conv.bias": (150,),
        "bn.weight": (27,),
        "depth_mlp.fc1.weight": (512, 27),
        "depth_mlp.fc2.weight": (512, 512),
        "context_mlp.fc2.bias": (512,),
        "depth_se.conv_reduce.weight": (512, 512, 1, 1),
        "context_se.conv_expand.bias": (512,),
        "depth_conv.2.conv2.weight": (512, 512, 3, 3),
        "depth_conv.0.bn1.running_mean": (512,),
        "depth_conv.3.aspp1.atrous_conv.weight": (512, 512, 1, 1),
        "depth_conv.3.aspp4.atrous_conv.weight": (512, 512, 3, 3),
        "depth_conv.3.aspp3.bn.weight": (512,),
        "depth_conv.3.global_avg_pool.1.weight": (512, 512, 1, 1),
        "depth_conv.3.global_avg_pool.2.running_mean": (512,),
        "depth_conv.3.conv1.weight": (512, 2560, 1, 1),
        "depth_conv.3.bn1.weight": (512,),
        "depth_conv.4.weight": (512, 128, 3, 3),
        "depth_conv.4.conv_offset.weight": (18, 512, 3, 3),
        "depth_conv.4.conv_offset.bias": (18,),
        "depth_conv.5.weight": (112, 512, 1, 1),
        "depth_conv.5.bias": (112,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    prefixes = ("reduce_conv.", "context_conv.", "bn.", "depth_mlp.", "depth_se.", "context_mlp.")
    prefixes += ("context_se.", "depth_conv.")
    assert all(k.startswith(prefixes) for k in sd)
    # ASPP convs and the DCN have no bias.
    assert not any(k.endswith("atrous_conv.bias") for k in sd)
    assert "depth_conv.3.conv1.bias" not in sd and "depth_conv.4.bias" not in sd
    assert "depth_conv.3.global_avg_pool.1.bias" not in sd


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_camera_vector_batch_norm_in_fp32_under_autocast(dtype: torch.dtype) -> None:
    # METHOD.md 14 quirk 31: the 27-value vector enters BatchNorm1d in fp32, whatever the dtype
    # of the image features under autocast.
    net = DepthNet(DepthNetConfig(mid_channels=16, use_aspp=False, use_dcn=False), 16, 4, 8)
    net.train()
    e, k, ida, bda = _mats(1, 6)
    cam = camera_vector(e, k, ida, bda)
    seen: list[torch.Tensor] = []
    net.bn.register_forward_hook(lambda m, i, o: seen.append(o))
    ref = net.bn(cam.reshape(6, 27)).detach()
    net.bn.reset_running_stats()
    x = torch.randn(6, 16, 2, 3).to(dtype)  # the neck output under autocast
    with torch.autocast("cpu", dtype=dtype):
        out = net(x, cam)
    assert seen[-1].dtype == torch.float32
    torch.testing.assert_close(seen[-1], ref, rtol=0, atol=0)
    assert out.context.dtype == dtype  # the rest follows autocast


def _quat_to_matrix(q) -> list[list[float]]:
    w, x, y, z = (float(v) for v in q)
    return [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]


def test_depth_net_camera_branch_on_the_fixture_rig_against_a_reference(fixture_root) -> None:
    # 27-D vector -> BN (eval, running stats) -> MLPs -> SE gates, written out by hand from the
    # info file of the real fixture (test-time ida: resize 0.44, crop y 140; bda identity).
    import pickle

    from labeldistill.config import DataConfig
    from labeldistill.data.dataset import NuScenesDataset
    from labeldistill.structures import CAMERAS

    with open(fixture_root / "infos.pkl", "rb") as f:
        infos = pickle.load(f)
    s = NuScenesDataset(
        DataConfig(key_idxes=(), return_depth=False), infos, fixture_root, train=False
    )[0]
    cam = camera_vector(
        s.ego_from_camera[None, 0], s.intrinsics[None, 0], s.ida[None, 0], s.bda[None]
    )
    rows = []
    for name in CAMERAS:
        calib = infos[0]["cam_infos"][name]["calibrated_sensor"]
        kk = calib["camera_intrinsic"]
        rot = _quat_to_matrix(calib["rotation"])
        t = calib["translation"]
        ext = [rot[r] + [t[r]] for r in range(3)]
        rows.append(
            [kk[0][0], kk[1][1], kk[0][2], kk[1][2], 0.44, 0.0, 0.0, 0.0, 0.44, -140.0]
            + [1.0, 0.0, 0.0, 1.0, 1.0]
            + [v for r in ext for v in r]
        )
    v_ref = torch.tensor(rows, dtype=torch.float64)
    torch.testing.assert_close(cam[0].double(), v_ref, rtol=1e-6, atol=1e-5)
    assert cam[0, CAMERAS.index("CAM_FRONT"), 0].item() == pytest.approx(1266.417, abs=1e-3)

    torch.manual_seed(3)
    net = DepthNet(DepthNetConfig(mid_channels=16, use_aspp=False, use_dcn=False), 16, 5, 8)
    with torch.no_grad():
        net.bn.running_mean.copy_(v_ref.mean(0).float())
        net.bn.running_var.copy_(v_ref.var(0).float() + 0.5)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.2, 0.2)
    net.eval()
    x = torch.randn(6, 16, 2, 3)
    out = net(x, cam)

    d = torch.float64
    bn = net.bn
    v = (v_ref - bn.running_mean.to(d)) / torch.sqrt(bn.running_var.to(d) + bn.eps)
    v = v * bn.weight.to(d) + bn.bias.to(d)

    def mlp(m, z):
        h = torch.relu(z @ m.fc1.weight.to(d).T + m.fc1.bias.to(d))
        return h @ m.fc2.weight.to(d).T + m.fc2.bias.to(d)

    def gate(se, z):
        w1, b1 = se.conv_reduce.weight.to(d)[:, :, 0, 0], se.conv_reduce.bias.to(d)
        w2, b2 = se.conv_expand.weight.to(d)[:, :, 0, 0], se.conv_expand.bias.to(d)
        return torch.sigmoid(torch.relu(z @ w1.T + b1) @ w2.T + b2)  # [6, mid]

    with torch.no_grad():
        feat = net.reduce_conv(x).to(d)  # [6, mid, 2, 3]
        ctx = feat * gate(net.context_se, mlp(net.context_mlp, v))[..., None, None]
        wc, bc = net.context_conv.weight.to(d)[:, :, 0, 0], net.context_conv.bias.to(d)
        ctx = torch.einsum("oc,bchw->bohw", wc, ctx) + bc[None, :, None, None]
        dep = feat * gate(net.depth_se, mlp(net.depth_mlp, v))[..., None, None]
        dep = net.depth_conv(dep.float()).double()
    torch.testing.assert_close(out.context.double(), ctx, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.depth_logits.double(), dep, rtol=1e-4, atol=1e-5)
