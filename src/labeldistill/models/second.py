"""SECOND 2D backbone of the CenterPoint teacher (METHOD.md 5).

Stage i = Conv3x3 (stride s_i) + BN + ReLU followed by ``layer_nums[i]`` x (Conv3x3 + BN + ReLU);
bias-free convs, BN eps 1e-3, momentum 0.01. Names ``blocks.{i}.{0,3,6,...}`` (convs) and
``blocks.{i}.{1,4,7,...}`` (BN) as the published state dict.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class SECOND(nn.Module):
    """x [B, C_in, Y, X] -> one map per stage, [B, out_i, Y / prod(s_<=i), X / prod(s_<=i)]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: Sequence[int],
        layer_nums: Sequence[int],
        strides: Sequence[int],
    ) -> None:
        super().__init__()
        if not len(out_channels) == len(layer_nums) == len(strides):
            raise ValueError("SECOND: out_channels, layer_nums and strides differ in length")
        blocks = []
        c_in = in_channels
        for c_out, n, s in zip(out_channels, layer_nums, strides):
            layers: list[nn.Module] = [
                nn.Conv2d(c_in, c_out, 3, stride=s, padding=1, bias=False),
                nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01),
                nn.ReLU(inplace=True),
            ]
            for _ in range(n):
                layers += [
                    nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01),
                    nn.ReLU(inplace=True),
                ]
            blocks.append(nn.Sequential(*layers))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs
