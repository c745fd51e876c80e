"""The R101 512x1408 configs (issue 6): they load with the stated choices, build, and run one
forward on CPU. To stay within the CPU budget the forward uses batch 1, the key frame only
(``data.key_idxes=[]``) and one camera; the network is the full R101 student at 512x1408."""

from __future__ import annotations

import pytest
import torch

from labeldistill.config import load_config
from labeldistill.models import build

NO_DOWNLOAD = "student.image_backbone.pretrained=false"


def test_r101_configs_values() -> None:
    base = load_config("bevdepth_r101_512x1408")
    ld = load_config("labeldistill_r101_512x1408")
    for cfg in (base, ld):
        assert cfg.data.image_size == (512, 1408)
        assert cfg.student.image_backbone.depth == 101
        assert cfg.data.ida_aug.resize_lim == (0.772, 1.1)
        assert cfg.grid.size_x == cfg.grid.size_y == 128 and cfg.grid.num_depth_bins == 112
        assert cfg.num_frames == 3 and cfg.trainer.max_epochs == 24
        assert cfg.data.batch_size * cfg.trainer.devices == 16
    assert base.stage == "student" and ld.stage == "labeldistill"
    assert ld.student == base.student  # the very same student: a clean baseline comparison
    assert (ld.distill.lidar_feat_weight, ld.distill.label_feat_weight) == (0.3, 0.3)


@pytest.mark.slow
def test_r101_student_forward_cpu() -> None:
    cfg = load_config("bevdepth_r101_512x1408", [NO_DOWNLOAD, "data.key_idxes=[]"])
    model = build.build_student(cfg).eval()
    assert len(model.backbone.img_backbone.layer3) == 23  # ResNet-101
    assert tuple(model.backbone.frustum.shape) == (112, 32, 88, 4)
    h, w = cfg.data.image_size
    imgs = torch.randn(1, 1, 1, 3, h, w)
    ego = torch.eye(4).view(1, 1, 1, 4, 4).clone()
    ego[..., :3, :3] = torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    ego[..., 2, 3] = 1.5
    k = torch.eye(4).view(1, 1, 1, 4, 4).clone()
    k[..., 0, 0] = k[..., 1, 1] = 1100.0
    k[..., 0, 2], k[..., 1, 2] = 704.0, 256.0
    ida = torch.eye(4).view(1, 1, 1, 4, 4)
    with torch.no_grad():
        out = model(imgs, ego, k, ida, torch.eye(4).unsqueeze(0))
    assert tuple(out.depth.shape) == (1, 112, 32, 88)
    assert torch.allclose(out.depth.sum(1), torch.ones(1, 32, 88), atol=1e-4)
    heat = out.head.tasks[0].heatmap
    assert tuple(heat.shape) == (1, 1, 128, 128) and torch.isfinite(heat).all()
    bev, _ = out.distill_feats
    assert tuple(bev.shape) == (1, 150, 128, 128)
    assert (bev.abs().sum(1) > 0).sum() > 50  # the camera's frustum lands in many BEV cells


def test_labeldistill_r101_builds() -> None:
    from labeldistill.models.build import build_stage_model

    cfg = load_config("labeldistill_r101_512x1408", [NO_DOWNLOAD])
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = build_stage_model(cfg)
    state = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    trunk = next(k for k in shapes if k.endswith("head.trunk.conv1.weight"))
    assert shapes[trunk] == (300, 450, 7, 7)
    adaptor = next(k for k in shapes if k.endswith("distill_encoder_label.blocks.0.0.weight"))
    assert shapes[adaptor] == (128, 150, 3, 3)
    assert sum(k.endswith("img_backbone.layer3.22.conv3.weight") for k in shapes) == 1
