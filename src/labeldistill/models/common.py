"""Building blocks shared by the student, the teachers and the adaptors.

Attribute names follow mmdet/mmdet3d (``conv1``, ``bn1``, ``deblocks.{i}.0`` ...) so that the
published state-dict keys (METHOD.md 12) map one to one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn

M = TypeVar("M", bound=nn.Module)


def freeze(module: M) -> M:
    """``requires_grad_(False)`` and eval mode; the owner keeps it in eval across ``.train()``
    (a teacher: docs/deviations.md, quirk 6). Returns ``module``."""
    module.requires_grad_(False)
    module.eval()
    return module


def to_channels_last(module: M) -> M:
    """Every 2D (transposed) convolution weight of ``module`` in NHWC memory format
    (``torch.channels_last``), in place; other tensors (the sparse encoder's 5D kernels, linear
    layers, buffers) are left alone. Values are unchanged; convolutions fed an NHWC weight
    compute and return NHWC (oneDNN's fast layout on CPU, tensor cores on CUDA)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            m.to(memory_format=torch.channels_last)
    return module


class BasicBlock(nn.Module):
    """ResNet basic block (mmdet naming): conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU.

    x: [B, C_in, H, W] -> [B, C_out, H / stride, W / stride]. A 1x1-conv + BN ``downsample``
    is built when the stride or channel count changes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        stride: int = 1,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class SECONDFPN(nn.Module):
    """SECOND-FPN neck: per level an up/down-sampling conv + BN + ReLU, outputs concatenated.

    For upsample stride s > 1 (or s == 1 unless ``use_conv_for_no_stride``) a ConvTranspose2d
    with kernel = stride = s; for s < 1 a Conv2d with kernel = stride = 1/s; for s == 1 with
    ``use_conv_for_no_stride`` a 1x1 Conv2d. All bias-free; BN eps 1e-3, momentum 0.01.

    feats: list of [B, C_i, H_i, W_i] with H_i * s_i equal for all i -> [B, sum(out), H, W].

    Init: Kaiming normal (fan_out, ReLU) on the ConvTranspose2d layers, and on the Conv2d
    layers too unless ``kaiming_conv2d=False`` (then PyTorch's default init, as the image neck
    of the published student: METHOD.md 14 quirk 30).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: Sequence[int],
        upsample_strides: Sequence[float],
        *,
        use_conv_for_no_stride: bool = False,
        kaiming_conv2d: bool = True,
    ) -> None:
        super().__init__()
        if not len(in_channels) == len(out_channels) == len(upsample_strides):
            raise ValueError("in_channels, out_channels and upsample_strides differ in length")
        self.out_channels = int(sum(out_channels))
        blocks = []
        for c_in, c_out, s in zip(in_channels, out_channels, upsample_strides):
            if s > 1 or (s == 1 and not use_conv_for_no_stride):
                k = int(round(s))
                conv: nn.Module = nn.ConvTranspose2d(c_in, c_out, k, stride=k, bias=False)
            else:
                k = int(round(1 / s))
                conv = nn.Conv2d(c_in, c_out, k, stride=k, bias=False)
            blocks.append(
                nn.Sequential(
                    conv, nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)
                )
            )
        self.deblocks = nn.ModuleList(blocks)
        init_types: tuple[type, ...] = (nn.ConvTranspose2d,)
        if kaiming_conv2d:
            init_types += (nn.Conv2d,)
        for m in self.modules():
            if isinstance(m, init_types):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        outs = [block(f) for block, f in zip(self.deblocks, feats)]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
