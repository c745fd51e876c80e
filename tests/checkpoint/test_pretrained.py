"""The ImageNet loader of checkpoint/pretrained.py (cache only, clear error otherwise)."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18

from labeldistill.checkpoint.pretrained import (
    imagenet_weights_path,
    init_student_backbone,
    load_imagenet_backbone,
)
from labeldistill.config import ImageBackboneConfig
from labeldistill.errors import UserError
from labeldistill.models.image_backbone import ResNetBackbone


def test_imagenet_weights_loaded_from_cache(tmp_path) -> None:
    path = imagenet_weights_path(18, tmp_path)
    assert path.parent == tmp_path / "checkpoints"
    assert path.name.startswith("resnet18-") and path.suffix == ".pth"
    reference = resnet18()
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    backbone = ResNetBackbone(ImageBackboneConfig(depth=18))
    assert load_imagenet_backbone(backbone, 18, tmp_path) == path
    torch.testing.assert_close(backbone.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    torch.testing.assert_close(backbone.bn1.running_var, reference.bn1.running_var)
    assert not backbone.conv1.weight.requires_grad  # loading keeps the stem frozen


def test_missing_weights_raise_one_line_user_error(tmp_path) -> None:
    backbone = ResNetBackbone(ImageBackboneConfig(depth=50))
    with pytest.raises(UserError) as info:
        load_imagenet_backbone(backbone, 50, tmp_path)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(tmp_path / "checkpoints") in msg
    assert "https://download.pytorch.org/models/resnet50-" in msg
    assert "--set student.image_backbone.pretrained=false" in msg


def test_wrong_file_raises_user_error(tmp_path) -> None:
    path = imagenet_weights_path(50, tmp_path)
    path.parent.mkdir(parents=True)
    torch.save(resnet18().state_dict(), path)  # an R18 file under the R50 name
    with pytest.raises(UserError, match="does not fit ResNet-50"):
        load_imagenet_backbone(ResNetBackbone(ImageBackboneConfig(depth=50)), 50, tmp_path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="unreadable"):
        load_imagenet_backbone(ResNetBackbone(ImageBackboneConfig(depth=50)), 50, tmp_path)


def test_init_student_backbone_respects_flag(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    cfg = ImageBackboneConfig(depth=18, pretrained=False)
    backbone = ResNetBackbone(cfg)
    before = backbone.layer1[0].conv1.weight.clone()
    assert init_student_backbone(backbone, cfg) is None
    torch.testing.assert_close(backbone.layer1[0].conv1.weight, before)
    with pytest.raises(UserError, match=str(tmp_path)):
        init_student_backbone(backbone, ImageBackboneConfig(depth=18, pretrained=True))
