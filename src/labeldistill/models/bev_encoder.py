"""BEV encoder of the student (METHOD.md 4.5): ResNet-18-style trunk without max-pool and a
SECOND-FPN neck over ``[input, layer1, layer2, layer3]``.

Attribute names follow the published state dict (METHOD.md 12.1): ``trunk.conv1``,
``trunk.bn1``, ``trunk.layer{1..3}.{j}``, ``neck.deblocks.{i}``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from labeldistill.config import BevEncoderConfig
from labeldistill.errors import ConfigError
from labeldistill.models.common import SECONDFPN, BasicBlock


class BevTrunk(nn.Module):
    """mmdet ResNet (BasicBlock) without max-pool: 7x7 stride-2 stem, then ``num_stages``
    layers of ``blocks_per_stage`` BasicBlocks with ``base * 2^i`` channels.

    x: [B, C_in, Y, X] -> list of layer outputs; layer i has ``base * 2^i`` channels and
    spatial size ``Y / (2 * prod(strides[:i+1]))``.
    """

    def __init__(self, in_channels: int, cfg: BevEncoderConfig) -> None:
        super().__init__()
        if len(cfg.strides) != cfg.num_stages:
            raise ConfigError(
                f"bev_encoder.strides has {len(cfg.strides)} entries but num_stages is "
                f"{cfg.num_stages}: give one stride per stage"
            )
        base = cfg.base_channels
        self.conv1 = nn.Conv2d(in_channels, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.stage_channels: list[int] = []
        c_in = base
        for i, stride in enumerate(cfg.strides):
            c_out = base * 2**i
            blocks = [BasicBlock(c_in, c_out, stride=stride)]
            blocks += [BasicBlock(c_out, c_out) for _ in range(cfg.blocks_per_stage - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.stage_channels.append(c_out)
            c_in = c_out
        self.num_stages = cfg.num_stages
        self.init_weights()

    def init_weights(self) -> None:
        """Kaiming (fan_out, ReLU, normal) convs, BN 1/0, each block's ``bn2`` zero
        (mmdet ``zero_init_residual``)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        outs = []
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
            outs.append(x)
        return outs


class BevEncoder(nn.Module):
    """Trunk + SECOND-FPN neck on the BEV feature map.

    forward(x [B, C_in, Y, X]) -> (neck output [B, sum(neck_out_channels), Y, X],
    (x as float32, layer1 output [B, base, Y/2, X/2])) — the second element holds the two
    feature-distillation levels S0 and S1 (METHOD.md 4.5, 7). Runs in float32 with autocast
    disabled, as the published code.
    """

    def __init__(self, in_channels: int, cfg: BevEncoderConfig) -> None:
        super().__init__()
        if (
            len(cfg.neck_upsample_strides) != cfg.num_stages + 1
            or len(cfg.neck_out_channels) != cfg.num_stages + 1
        ):
            raise ConfigError(
                "bev_encoder.neck_upsample_strides and neck_out_channels need num_stages + 1 "
                f"entries (input + each stage), got {list(cfg.neck_upsample_strides)} and "
                f"{list(cfg.neck_out_channels)}"
            )
        self.trunk = BevTrunk(in_channels, cfg)
        self.neck = SECONDFPN(
            [in_channels, *self.trunk.stage_channels],
            list(cfg.neck_out_channels),
            list(cfg.neck_upsample_strides),
        )
        self.in_channels = in_channels
        self.out_channels = self.neck.out_channels

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            levels = self.trunk(x)
            neck = self.neck([x, *levels])
        return neck, (x, levels[0])
