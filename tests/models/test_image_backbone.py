"""Image backbone (torchvision-compatible ResNet, frozen stem) and image neck."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet50

from labeldistill.config import ImageBackboneConfig, ImageNeckConfig
from labeldistill.models.image_backbone import ResNetBackbone, build_image_neck


def test_state_dict_keys_match_torchvision_without_fc() -> None:
    ours = ResNetBackbone(ImageBackboneConfig(depth=50)).state_dict()
    ref = {k: v.shape for k, v in resnet50().state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.items()} == ref
    # METHOD.md 12.1 names
    assert ours["conv1.weight"].shape == (64, 3, 7, 7)
    assert "layer4.2.conv3.weight" in ours and "layer1.0.downsample.1.running_var" in ours
    assert "layer3.5.bn3.weight" in ours and "layer3.6.bn3.weight" not in ours  # 3/4/6/3 blocks


@pytest.mark.parametrize(
    ("depth", "channels"), [(18, (64, 128, 256, 512)), (50, (256, 512, 1024, 2048))]
)
def test_outputs_and_neck(depth: int, channels: tuple[int, ...]) -> None:
    backbone = ResNetBackbone(ImageBackboneConfig(depth=depth, pretrained=False)).eval()
    neck = build_image_neck(ImageNeckConfig(), backbone.out_channels).eval()
    x = torch.randn(2, 3, 64, 192)
    with torch.no_grad():
        feats = backbone(x)
        out = neck(feats)
    assert [tuple(f.shape) for f in feats] == [
        (2, c, 64 // s, 192 // s) for c, s in zip(channels, (4, 8, 16, 32))
    ]
    assert out.shape == (2, 512, 4, 12)
    # Neck layer types as published: convs for strides 0.25 / 0.5, transposed convs for 1 / 2.
    kinds = [type(b[0]).__name__ for b in neck.deblocks]
    assert kinds == ["Conv2d", "Conv2d", "ConvTranspose2d", "ConvTranspose2d"]
    assert neck.deblocks[0][0].weight.shape == (128, channels[0], 4, 4)
    assert neck.deblocks[3][0].weight.shape == (channels[3], 128, 2, 2)


def test_stem_frozen_and_kept_in_eval() -> None:
    backbone = ResNetBackbone(ImageBackboneConfig(depth=18, frozen_stages=0))
    backbone.train()
    assert not backbone.conv1.weight.requires_grad and not backbone.bn1.weight.requires_grad
    assert backbone.layer1[0].conv1.weight.requires_grad
    assert not backbone.bn1.training and backbone.layer1[0].bn1.training
    stem_mean = backbone.bn1.running_mean.clone()
    l1_mean = backbone.layer1[0].bn1.running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64) * 3 + 1)
    torch.testing.assert_close(backbone.bn1.running_mean, stem_mean)  # stem statistics frozen
    assert not torch.allclose(backbone.layer1[0].bn1.running_mean, l1_mean)

    free = ResNetBackbone(ImageBackboneConfig(depth=18, frozen_stages=-1)).train()
    assert free.conv1.weight.requires_grad and free.bn1.training
    more = ResNetBackbone(ImageBackboneConfig(depth=18, frozen_stages=1)).train()
    assert not more.layer1[0].conv1.weight.requires_grad and not more.layer1[0].bn1.training
    assert more.layer2[0].conv1.weight.requires_grad
    norm_eval = ResNetBackbone(
        ImageBackboneConfig(depth=18, frozen_stages=-1, norm_eval=True)
    ).train()
    assert not norm_eval.layer3[1].bn2.training and norm_eval.layer3[1].conv2.training


def test_image_neck_init_kaiming_on_transposed_convs_only() -> None:
    # METHOD.md 14 quirk 30: ConvTranspose2d (C4: 1x1, C5: 2x2) Kaiming normal, fan_out, ReLU:
    # std = sqrt(2 / (C_in k^2)) (torch's fan_out of a transposed weight [C_in, C_out, k, k]);
    # Conv2d (C2: 4x4, C3: 2x2) PyTorch default: U(-b, b), b = 1 / sqrt(C_in k^2), std b / sqrt 3.
    torch.manual_seed(0)
    neck = build_image_neck(ImageNeckConfig(), (256, 512, 1024, 2048))
    convs = [block[0] for block in neck.deblocks]
    assert [type(c).__name__ for c in convs] == [
        "Conv2d",
        "Conv2d",
        "ConvTranspose2d",
        "ConvTranspose2d",
    ]
    for conv, c_in, k in ((convs[0], 256, 4), (convs[1], 512, 2)):
        bound = 1.0 / (c_in * k * k) ** 0.5
        w = conv.weight
        assert w.abs().max() <= bound
        assert w.std().item() == pytest.approx(bound / 3**0.5, rel=0.02)
    for conv, c_in, k in ((convs[2], 1024, 1), (convs[3], 2048, 2)):
        std = (2.0 / (c_in * k * k)) ** 0.5
        w = conv.weight
        assert w.std().item() == pytest.approx(std, rel=0.02)
        assert abs(w.mean().item()) < 0.02 * std
        assert w.abs().max() > 3.0 * std  # normal tails, not a uniform init
