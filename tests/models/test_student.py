"""The assembled BEVDepth student: outputs, losses and gradients (tiny config), the published
state-dict layout (paper 2key / 4key configs), and one forward + backward of the paper config."""

from __future__ import annotations

import math

import pytest
import torch

from labeldistill.config import GridConfig, HeadConfig, StudentConfig
from labeldistill.models.student import BEVDepthStudent, StudentHead
from labeldistill.structures import StudentOutput


@pytest.fixture
def tiny(tiny_student_config, tiny_grid) -> BEVDepthStudent:
    cfg = tiny_student_config()
    cfg = StudentConfig(
        image_backbone=cfg.image_backbone,
        image_neck=cfg.image_neck,
        depth_net=cfg.depth_net,
        view_transform=cfg.view_transform,
        bev_encoder=cfg.bev_encoder,
        head=HeadConfig(share_conv_channels=8, head_conv=8),
    )
    return BEVDepthStudent(cfg, tiny_grid, num_frames=2, image_size=(32, 96))


def test_tiny_forward_losses_and_gradients(tiny, camera_inputs) -> None:
    model = tiny.train()
    imgs, e, k, ida, bda = camera_inputs(2, 2, 2)
    out = model(imgs, e, k, ida, bda)
    assert isinstance(out, StudentOutput)
    assert len(out.head.tasks) == 6
    assert out.head.tasks[1].heatmap.shape == (2, 2, 32, 32)  # truck, construction_vehicle
    assert out.head.tasks[0].reg.shape == (2, 2, 32, 32) and out.head.tasks[0].dim.shape == (
        2,
        3,
        32,
        32,
    )
    assert out.depth.shape == (4, 16, 2, 6)
    bev, layer1 = out.distill_feats
    assert bev.shape == (2, 12, 32, 32) and layer1.shape == (2, 8, 16, 16)

    boxes = [torch.tensor([[4.0, 3.0, 0.5, 4.2, 1.9, 1.6, 0.3, 1.0, 0.0]]), torch.zeros(0, 9)]
    labels = [torch.tensor([0]), torch.zeros(0, dtype=torch.long)]
    det = model.loss_detection(out, boxes, labels)
    assert set(det) == {"heatmap", "bbox"} and all(torch.isfinite(v) for v in det.values())
    depth_gt = torch.zeros(2, 2, 32, 96)
    depth_gt[:, :, 5, 7] = 9.3  # one LiDAR point per camera in block (0, 0): bin (9.3-2)//2 = 3
    dl = model.loss_depth(out, depth_gt)
    probs = out.depth[:, 3, 0, 0]  # the target bin's probabilities of the four foreground rows
    rows = out.depth[:, :, 0, 0]
    manual = -(torch.log(probs) + torch.log1p(-rows).sum(dim=1) - torch.log1p(-probs)).mean()
    torch.testing.assert_close(dl, manual, rtol=1e-5, atol=1e-5)

    (det["heatmap"] + det["bbox"] + 3.0 * dl).backward()
    assert model.backbone.img_backbone.layer1[0].conv1.weight.grad.abs().sum() > 0
    assert model.backbone.depth_net.depth_conv[5].weight.grad.abs().sum() > 0
    assert model.head.trunk.conv1.weight.grad.abs().sum() > 0
    assert model.head.task_heads[0].heatmap[1].weight.grad.abs().sum() > 0
    assert model.backbone.img_backbone.conv1.weight.grad is None  # frozen stem

    model.eval()
    with torch.no_grad():
        dets = model.decode(model(imgs, e, k, ida, bda))
    assert len(dets) == 2 and all(d.boxes.shape[1] == 9 for d in dets)


def test_frame_count_is_checked(tiny, camera_inputs) -> None:
    model = tiny
    imgs, e, k, ida, bda = camera_inputs(1, 3, 2)
    with pytest.raises(ValueError, match="2 frames"):
        model(imgs, e, k, ida, bda)


def test_published_state_dict_layout_4key_head() -> None:
    head = StudentHead(750, GridConfig(), StudentConfig())
    sd = head.state_dict()
    assert tuple(sd["trunk.conv1.weight"].shape) == (300, 750, 7, 7)
    assert tuple(sd["neck.deblocks.0.0.weight"].shape) == (750, 64, 1, 1)
    assert tuple(sd["neck.deblocks.1.0.weight"].shape) == (300, 64, 2, 2)
    assert {k.split(".")[0] for k in sd} == {"trunk", "neck", "shared_conv", "task_heads"}


def test_published_state_dict_layout_2key() -> None:
    frames, bev_in = 3, 450
    model = BEVDepthStudent(StudentConfig(), GridConfig(), num_frames=frames, image_size=(256, 704))
    sd = model.state_dict()
    prefixes = ("backbone.img_backbone.", "backbone.img_neck.", "backbone.depth_net.")
    prefixes += ("head.trunk.", "head.neck.", "head.shared_conv.", "head.task_heads.")
    buffers = {
        "backbone.voxel_size",
        "backbone.voxel_coord",
        "backbone.voxel_num",
        "backbone.frustum",
    }
    assert all(k.startswith(prefixes) or k in buffers for k in sd), [
        k for k in sd if not (k.startswith(prefixes) or k in buffers)
    ]
    assert buffers <= set(sd)
    expected = {
        "backbone.frustum": (112, 16, 44, 4),
        "backbone.img_backbone.conv1.weight": (64, 3, 7, 7),
        "backbone.img_backbone.layer3.5.conv3.weight": (1024, 256, 1, 1),
        "backbone.img_backbone.layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
        "backbone.img_neck.deblocks.0.0.weight": (128, 256, 4, 4),
        "backbone.img_neck.deblocks.1.0.weight": (128, 512, 2, 2),
        "backbone.img_neck.deblocks.2.0.weight": (1024, 128, 1, 1),
        "backbone.img_neck.deblocks.3.0.weight": (2048, 128, 2, 2),
        "backbone.depth_net.context_conv.weight": (150, 512, 1, 1),
        "backbone.depth_net.depth_conv.4.weight": (512, 128, 3, 3),
        "backbone.depth_net.depth_conv.5.weight": (112, 512, 1, 1),
        "head.trunk.conv1.weight": (300, bev_in, 7, 7),
        "head.trunk.layer2.0.downsample.0.weight": (600, 300, 1, 1),
        "head.trunk.layer3.1.conv2.weight": (1200, 1200, 3, 3),
        "head.neck.deblocks.0.0.weight": (bev_in, 64, 1, 1),
        "head.neck.deblocks.3.0.weight": (1200, 64, 8, 8),
        "head.shared_conv.conv.weight": (64, 256, 3, 3),
        "head.task_heads.0.reg.0.conv.weight": (64, 64, 3, 3),
        "head.task_heads.5.heatmap.1.weight": (2, 64, 3, 3),
        "head.task_heads.3.dim.1.bias": (3,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    # Each module appears once (no duplicated encoder keys).
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(
        v.numel()
        for k, v in sd.items()
        if v.is_floating_point() and "running" not in k and k not in buffers
    )


@pytest.mark.slow
def test_paper_architecture_forward_backward_reduced_shape(camera_inputs) -> None:
    """The paper's student (R50, DCN + ASPP, C = 150, 112 bins, 2 key frames = F 3, 450-channel
    BEV trunk) at a quarter of the image size (64 x 192) and a 64 x 64 grid of 1.6 m cells, batch 1:
    one training forward + backward on CPU. The full 256 x 704 / 128 x 128 step takes minutes on
    a 2-core CPU and runs in benchmarks/bench_student.py (time and peak memory in
    benchmarks/RESULTS.md)."""
    grid = GridConfig(x_bound=(-51.2, 51.2, 1.6), y_bound=(-51.2, 51.2, 1.6))
    model = BEVDepthStudent(StudentConfig(), grid, num_frames=3, image_size=(64, 192)).train()
    imgs, e, k, ida, bda = camera_inputs(1, 3, 6, size=(64, 192))
    k[..., 0, 0] = k[..., 1, 1] = 140.0
    out = model(imgs, e, k, ida, bda)
    assert out.depth.shape == (6, 112, 4, 12)
    assert out.distill_feats[0].shape == (1, 450, 64, 64)
    assert out.distill_feats[1].shape == (1, 300, 32, 32)
    assert out.head.tasks[0].heatmap.shape == (1, 1, 64, 64)
    # Cameras 1.6 m up looking outwards: the key-frame BEV is non-zero around the car only.
    key_bev = out.distill_feats[0][0, :150].abs().sum(0)
    assert key_bev[28:37, 38:48].sum() > 0 and key_bev[0, 0] == 0
    boxes = [torch.tensor([[10.0, 2.0, 0.0, 4.5, 1.9, 1.6, 0.2, 0.0, 0.0]])]
    det = model.loss_detection(out, boxes, [torch.tensor([0])])
    depth_gt = torch.zeros(1, 6, 64, 192)
    depth_gt[:, :, 30:50:7, ::13] = 12.0
    loss = det["heatmap"] + det["bbox"] + 3.0 * model.loss_depth(out, depth_gt)
    assert math.isfinite(loss.item())
    loss.backward()
    grad = model.backbone.img_backbone.layer4[2].conv3.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert model.backbone.depth_net.depth_conv[4].conv_offset.weight.grad.abs().sum() > 0
