"""Image backbone (torchvision ResNet, C2..C5) and the SECOND-FPN image neck (METHOD.md 4.1).

The backbone's attributes are torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4``;
no ``fc``), so ``backbone.img_backbone.*`` keys of the published checkpoints (METHOD.md 12.1) and
torchvision's ImageNet state dicts load one to one. Weights are random here (models do no file
I/O); ``labeldistill.checkpoint.pretrained`` loads the ImageNet weights.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models import resnet

from labeldistill.config import ImageBackboneConfig, ImageNeckConfig
from labeldistill.models.common import SECONDFPN

#: Output channels C2..C5 per ResNet depth.
STAGE_CHANNELS: dict[int, tuple[int, int, int, int]] = {
    18: (64, 128, 256, 512),
    34: (64, 128, 256, 512),
    50: (256, 512, 1024, 2048),
    101: (256, 512, 1024, 2048),
}

_BUILDERS = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50, 101: resnet.resnet101}


class ResNetBackbone(nn.Module):
    """torchvision ResNet without ``avgpool``/``fc``, returning C2..C5.

    x: [B', 3, H, W] -> [C2 [B', c2, H/4, W/4], C3 [.., H/8], C4 [.., H/16], C5 [.., H/32]]
    with channels :data:`STAGE_CHANNELS`. ``frozen_stages`` as mmdet: 0 freezes the stem
    (conv1 + bn1; parameters without gradient and the BN kept in eval mode across
    ``.train()``), k > 0 also ``layer1..layer k``, -1 freezes nothing. ``norm_eval`` keeps
    every BatchNorm in eval mode.
    """

    def __init__(self, cfg: ImageBackboneConfig) -> None:
        super().__init__()
        if cfg.depth not in _BUILDERS:
            raise ValueError(f"image backbone depth {cfg.depth} not supported (18, 34, 50, 101)")
        net = _BUILDERS[cfg.depth](weights=None)
        self.depth = cfg.depth
        self.out_channels = STAGE_CHANNELS[cfg.depth]
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        self.frozen_stages = cfg.frozen_stages
        self.norm_eval = cfg.norm_eval
        for module in self._frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        self.train(True)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        mods: list[nn.Module] = [self.conv1, self.bn1]
        mods += [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]
        return mods

    def train(self, mode: bool = True) -> ResNetBackbone:
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs


def build_image_neck(cfg: ImageNeckConfig, in_channels: Sequence[int]) -> SECONDFPN:
    """SECOND-FPN over C2..C5: strides (0.25, 0.5, 1, 2) bring every level to stride 16.

    [C2..C5] -> [B', sum(cfg.out_channels), H/16, W/16] (512 channels in the paper).
    Kaiming init on the ConvTranspose2d branches only (quirk 30).
    """
    # Quirk 30: the published neck's init_weights() initialises only its ConvTranspose2d
    # layers; the Conv2d deblocks of C2 / C3 keep PyTorch's default init.
    return SECONDFPN(
        list(in_channels),
        list(cfg.out_channels),
        list(cfg.upsample_strides),
        kaiming_conv2d=False,
    )
