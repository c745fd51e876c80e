"""CenterPoint LiDAR teacher: published state-dict layout, the paper config forward on CPU,
a tiny config that trains (gradients everywhere), BEV orientation and config checks."""

from __future__ import annotations

import math

import pytest
import torch

from labeldistill.config import GridConfig, HeadConfig, LidarTeacherConfig
from labeldistill.errors import ConfigError
from labeldistill.models.lidar_teacher import LidarTeacher
from labeldistill.models.sparse_encoder import sparse_shape
from labeldistill.ops.sparse_conv import convert_state_dict
from labeldistill.structures import TASKS

TINY = LidarTeacherConfig(
    voxel_size=(0.4, 0.4, 0.4),
    max_voxels_train=5000,
    max_voxels_eval=6000,
    base_channels=8,
    encoder_out_channels=16,
    encoder_channels=((8, 8, 16), (16, 16)),
    encoder_paddings=((0, 0, 1), (0, 0)),
    second_out_channels=(16, 32),
    second_layer_nums=(1, 1),
    neck_out_channels=(16, 16),
    sparse_backend="torch",
    head=HeadConfig(share_conv_channels=8, head_conv=8, init_bias=-2.19),
)


def synthetic_sweep(num_points: int, seed: int = 0, pad_to: int | None = None) -> torch.Tensor:
    """A LiDAR-like cloud [P, 5]: ground rings, a few box-shaped objects, walls; -999 padding."""
    g = torch.Generator().manual_seed(seed)
    n_ground = num_points // 2
    r = 2.0 + 50.0 * torch.rand(n_ground, generator=g) ** 1.5
    a = 2 * math.pi * torch.rand(n_ground, generator=g)
    ground = torch.stack(
        [r * torch.cos(a), r * torch.sin(a), -1.8 + 0.05 * torch.randn(n_ground, generator=g)], 1
    )
    n_obj = num_points - n_ground
    centers = (torch.rand(40, 3, generator=g) - 0.5) * torch.tensor(
        [90.0, 90.0, 0.0]
    ) + torch.tensor([0, 0, -1.0])
    which = torch.randint(0, 40, (n_obj,), generator=g)
    obj = centers[which] + (torch.rand(n_obj, 3, generator=g) - 0.5) * torch.tensor([4.0, 2.0, 1.6])
    xyz = torch.cat([ground, obj])
    feats = torch.stack(
        [torch.rand(num_points, generator=g) * 255, torch.rand(num_points, generator=g) * 0.45], 1
    )
    pts = torch.cat([xyz, feats], 1)
    if pad_to is not None and pad_to > num_points:
        pts = torch.cat([pts, torch.full((pad_to - num_points, 5), -999.0)])
    return pts


def test_paper_state_dict_keys_and_published_shapes():
    teacher = LidarTeacher(LidarTeacherConfig(), GridConfig())
    sd = teacher.state_dict()
    enc = "pts_middle_encoder."
    layers = enc + "encoder_layers.encoder_layer"
    expected = {
        enc + "conv_input.0.weight": (3, 3, 3, 5, 16),
        enc + "conv_input.1.weight": (16,),
        layers + "1.0.conv1.weight": (3, 3, 3, 16, 16),
        layers + "1.1.conv2.weight": (3, 3, 3, 16, 16),
        layers + "1.2.0.weight": (3, 3, 3, 16, 32),
        layers + "1.2.1.running_var": (32,),
        layers + "2.2.0.weight": (3, 3, 3, 32, 64),
        layers + "3.0.bn1.weight": (64,),
        layers + "3.2.0.weight": (3, 3, 3, 64, 128),
        layers + "4.1.conv2.weight": (3, 3, 3, 128, 128),
        layers + "4.1.bn2.running_mean": (128,),
        enc + "conv_out.0.weight": (3, 1, 1, 128, 128),
        enc + "conv_out.1.weight": (128,),
        "pts_backbone.blocks.0.0.weight": (128, 256, 3, 3),
        "pts_backbone.blocks.0.15.weight": (128, 128, 3, 3),
        "pts_backbone.blocks.0.16.running_var": (128,),
        "pts_backbone.blocks.1.0.weight": (256, 128, 3, 3),
        "pts_backbone.blocks.1.15.weight": (256, 256, 3, 3),
        "pts_neck.deblocks.0.0.weight": (256, 128, 1, 1),
        "pts_neck.deblocks.1.0.weight": (256, 256, 2, 2),
        "pts_neck.deblocks.1.1.weight": (256,),
        "pts_bbox_head.shared_conv.conv.weight": (64, 512, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    # every sparse-conv weight (5-d) of the encoder, nothing else 5-d; no voxel-layer parameters
    sparse_keys = sorted(k for k, v in sd.items() if v.dim() == 5)
    n_blocks = 4 * 2 * 2  # 4 stages x 2 basic blocks x 2 convs
    assert len(sparse_keys) == 1 + n_blocks + 3 + 1
    assert all(k.startswith(enc) for k in sparse_keys)
    assert not any(k.startswith(enc + "encoder_layers.encoder_layer4.2") for k in sd)
    prefixes = ("pts_middle_encoder.", "pts_backbone.", "pts_neck.", "pts_bbox_head.")
    assert all(k.startswith(prefixes) for k in sd)
    assert (
        len(
            [
                k
                for k in sd
                if k.startswith("pts_backbone.") and k.endswith(".weight") and sd[k].dim() == 4
            ]
        )
        == 12
    )
    assert teacher.pts_middle_encoder.sparse_shape == (41, 1024, 1024)
    assert teacher.pts_middle_encoder.out_shape == (2, 128, 128)
    assert teacher.pts_middle_encoder.bev_channels == 256


def test_conversion_round_trip_loads_and_gives_same_outputs():
    grid = GridConfig()
    a = LidarTeacher(TINY, grid).eval()
    torch.manual_seed(1)
    b = LidarTeacher(TINY, grid).eval()
    published = a.state_dict()  # already [kD, kH, kW, in, out]
    via_spconv2 = convert_state_dict(
        convert_state_dict(published, "mmcv", "spconv2"), "spconv2", "mmcv"
    )
    b.load_state_dict(via_spconv2, strict=True)
    pts = synthetic_sweep(1500, seed=3)[None]
    with torch.no_grad():
        fa, fb = a.extract_feats(pts), b.extract_feats(pts)
    assert torch.equal(fa[0], fb[0]) and torch.equal(fa[1], fb[1])
    sp2 = convert_state_dict(published, "mmcv", "spconv2")
    key = "pts_middle_encoder.conv_out.0.weight"
    assert tuple(sp2[key].shape) == (16, 3, 1, 1, 16)
    assert tuple(
        convert_state_dict(published, "mmcv", "spconv2")[
            "pts_middle_encoder.conv_input.0.weight"
        ].shape
    ) == (8, 3, 3, 3, 5)


@pytest.mark.slow  # one paper-size forward (41x1024x1024 sparse grid, 30k points) on 2 CPU cores
def test_paper_config_forward_on_cpu():
    teacher = LidarTeacher(LidarTeacherConfig(sparse_backend="torch"), GridConfig()).eval()
    points = synthetic_sweep(30000, seed=0, pad_to=32000)[None]
    with torch.no_grad():
        vox = teacher.voxelize(points)
        out = teacher(points)
    assert 10000 < vox.coors.shape[0] <= 30000
    assert out.feats[0].shape == (1, 128, 128, 128)
    assert out.feats[1].shape == (1, 256, 64, 64)
    assert len(out.head.tasks) == len(TASKS)
    for task, names in zip(out.head.tasks, TASKS):
        assert task.heatmap.shape == (1, len(names), 128, 128)
        assert task.reg.shape == (1, 2, 128, 128) and task.dim.shape == (1, 3, 128, 128)
    assert torch.isfinite(out.feats[0]).all() and torch.isfinite(out.feats[1]).all()
    assert out.feats[0].abs().sum() > 0


def test_tiny_teacher_trains_gradients_reach_every_parameter():
    teacher = LidarTeacher(TINY, GridConfig()).train()
    assert teacher.max_voxels == TINY.max_voxels_train
    points = torch.stack(
        [synthetic_sweep(1500, seed=5, pad_to=2000), synthetic_sweep(2000, seed=6)]
    )
    out = teacher(points)
    assert out.feats[0].shape == (2, 16, 128, 128) and out.feats[1].shape == (2, 32, 64, 64)
    loss = out.feats[0].mean() + out.feats[1].mean()
    loss = loss + sum(
        t.heatmap.sigmoid().mean() + t.box_code().abs().mean() for t in out.head.tasks
    )
    loss.backward()
    missing = [
        n
        for n, p in teacher.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all()
    ]
    assert missing == []
    assert teacher.pts_middle_encoder.conv_input[0].weight.grad.abs().sum() > 0
    teacher.eval()
    assert teacher.max_voxels == TINY.max_voxels_eval


def test_forward_equals_extract_then_decode():
    teacher = LidarTeacher(TINY, GridConfig()).eval()
    points = synthetic_sweep(1000, seed=8)[None]
    with torch.no_grad():
        out = teacher(points)
        feats = teacher.extract_feats(points)
        head = teacher.decode_features(feats)
    assert torch.equal(out.feats[0], feats[0])
    for a, b in zip(out.head.tasks, head.tasks):
        assert torch.equal(a.heatmap, b.heatmap) and torch.equal(a.box_code(), b.box_code())


def test_bev_layout_is_y_rows_x_columns():
    teacher = LidarTeacher(TINY, GridConfig()).eval()
    # one point at x = 10.1, y = -20.3: fine voxel (x 153, y 77) at 0.4 m; after the stride-2
    # conv (3^3, pad 1) it reaches BEV cells x in {76, 77}, y in {38, 39} (0.8 m cells)
    points = torch.tensor([[[10.1, -20.3, 0.3, 50.0, 0.0]]])
    with torch.no_grad():
        bev = teacher.bev_features(points)
    assert bev.shape == (1, teacher.pts_middle_encoder.bev_channels, 128, 128)
    support = torch.nonzero(bev[0].abs().sum(0)).tolist()
    assert support and set(map(tuple, support)) <= {(38, 76), (38, 77), (39, 76), (39, 77)}


def test_sparse_shape_and_config_errors():
    assert sparse_shape(LidarTeacherConfig()) == (41, 1024, 1024)
    assert sparse_shape(TINY) == (21, 256, 256)
    with pytest.raises(ConfigError, match="grid"):
        LidarTeacher(LidarTeacherConfig(voxel_size=(0.2, 0.2, 0.2)), GridConfig())
    with pytest.raises(ConfigError, match="shrinks"):
        LidarTeacher(
            LidarTeacherConfig(
                voxel_size=(0.1, 0.1, 2.0),
                encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, 0), (0, 0)),
            ),
            GridConfig(),
        )
    with pytest.raises(ConfigError, match="point_range"):
        LidarTeacher(TINY, GridConfig(x_bound=(-40.0, 40.0, 0.8)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sparse_trunk_runs_in_fp32_under_autocast(dtype: torch.dtype) -> None:
    # METHOD.md 14 quirk 29: voxelisation, mean VFE and the sparse encoder are fp32 under
    # mixed precision; SECOND (and the neck) follow autocast.
    teacher = LidarTeacher(TINY, GridConfig()).eval()
    points = torch.stack([synthetic_sweep(1500, seed=3, pad_to=2000), synthetic_sweep(2000, 4)])
    with torch.no_grad():
        ref = teacher.bev_features(points)
        with torch.autocast("cpu", dtype=dtype):
            mixed = teacher.bev_features(points)
            levels = teacher.pts_backbone(mixed)
    assert ref.dtype == torch.float32 and mixed.dtype == torch.float32
    assert ref.abs().sum() > 0 and torch.equal(mixed, ref)
    assert all(level.dtype == dtype for level in levels)


def test_second_and_neck_against_a_written_out_forward() -> None:
    # METHOD.md 5: SECOND stage i = conv3x3 stride s_i + BN + ReLU, then layer_nums[i] x
    # (conv3x3 + BN + ReLU), both stage outputs returned; SECOND-FPN with use_conv_for_no_stride:
    # stride 1 -> 1x1 Conv2d, stride 2 -> ConvTranspose2d k = s = 2, each + BN + ReLU, concat.
    import torch.nn.functional as F

    torch.manual_seed(2)
    teacher = LidarTeacher(TINY, GridConfig())
    with torch.no_grad():
        for m in teacher.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    teacher.eval()
    x = torch.randn(2, teacher.pts_middle_encoder.bev_channels, 16, 16)
    with torch.no_grad():
        levels = teacher.pts_backbone(x)
        neck = teacher.pts_neck(levels)

    def bn(y, m):
        return F.batch_norm(y, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    ref_levels = []
    y = x
    for block, stride in zip(teacher.pts_backbone.blocks, TINY.second_strides):
        convs = [m for m in block if isinstance(m, torch.nn.Conv2d)]
        bns = [m for m in block if isinstance(m, torch.nn.BatchNorm2d)]
        assert len(convs) == 1 + TINY.second_layer_nums[0] and bns[0].eps == 1e-3
        for k, (conv, norm) in enumerate(zip(convs, bns)):
            y = torch.relu(
                bn(F.conv2d(y, conv.weight, stride=stride if k == 0 else 1, padding=1), norm)
            )
        ref_levels.append(y)
    assert [tuple(r.shape) for r in ref_levels] == [(2, 16, 16, 16), (2, 32, 8, 8)]
    for got, ref in zip(levels, ref_levels):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    d0, d1 = teacher.pts_neck.deblocks
    assert isinstance(d0[0], torch.nn.Conv2d) and d0[0].kernel_size == (1, 1)
    assert isinstance(d1[0], torch.nn.ConvTranspose2d) and d1[0].stride == (2, 2)
    up0 = torch.relu(bn(F.conv2d(ref_levels[0], d0[0].weight), d0[1]))
    up1 = torch.relu(bn(F.conv_transpose2d(ref_levels[1], d1[0].weight, stride=2), d1[1]))
    torch.testing.assert_close(neck, torch.cat([up0, up1], 1), rtol=1e-5, atol=1e-5)
    assert neck.shape == (2, 32, 16, 16)
