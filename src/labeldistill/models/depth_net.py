"""Camera-aware DepthNet of BEVDepth (METHOD.md 4.2).

Attribute names follow the published code so that ``backbone.depth_net.*`` keys (METHOD.md
12.1) map one to one: ``bn`` (BatchNorm1d over the 27-value camera vector), ``reduce_conv``,
``context_mlp`` / ``context_se`` / ``context_conv``, ``depth_mlp`` / ``depth_se`` and
``depth_conv.{0..5}`` = 3 BasicBlocks, ASPP, deformable conv, 1x1 conv to D bins.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from labeldistill.config import DepthNetConfig
from labeldistill.models.common import BasicBlock
from labeldistill.ops.deform_conv import deform_conv2d_plain

#: Length of the camera-parameter vector.
CAMERA_VECTOR_DIM = 27


def camera_vector(ego_from_camera: Tensor, intrinsics: Tensor, ida: Tensor, bda: Tensor) -> Tensor:
    """The 27-value camera-parameter vector of each camera (METHOD.md 4.2 step 1).

    ego_from_camera, intrinsics, ida: [B, N, 4, 4]; bda: [B, 4, 4] -> [B, N, 27]:
    fx, fy, cx, cy; ida[0,0], ida[0,1], ida[0,3], ida[1,0], ida[1,1], ida[1,3];
    bda[0,0], bda[0,1], bda[1,0], bda[1,1], bda[2,2]; ego_from_camera[:3, :4] row-major.
    """
    b, n = intrinsics.shape[:2]
    k, a = intrinsics, ida
    bd = bda.unsqueeze(1).expand(b, n, 4, 4)
    parts = [
        k[..., 0, 0],
        k[..., 1, 1],
        k[..., 0, 2],
        k[..., 1, 2],
        a[..., 0, 0],
        a[..., 0, 1],
        a[..., 0, 3],
        a[..., 1, 0],
        a[..., 1, 1],
        a[..., 1, 3],
        bd[..., 0, 0],
        bd[..., 0, 1],
        bd[..., 1, 0],
        bd[..., 1, 1],
        bd[..., 2, 2],
    ]
    head = torch.stack(parts, dim=-1)
    return torch.cat([head, ego_from_camera[..., :3, :4].reshape(b, n, 12).to(head.dtype)], dim=-1)


class Mlp(nn.Module):
    """Linear - ReLU - Linear: [.., in] -> [.., out]."""

    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SELayer(nn.Module):
    """Squeeze-excitation gate from the camera embedding.

    x [B', C, h, w], v [B', C, 1, 1] -> x * sigmoid(conv_expand(relu(conv_reduce(v)))).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, channels, 1, bias=True)
        self.act1 = nn.ReLU()
        self.conv_expand = nn.Conv2d(channels, channels, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor, v: Tensor) -> Tensor:
        return x * self.gate(self.conv_expand(self.act1(self.conv_reduce(v))))


class _ASPPBranch(nn.Module):
    """Atrous conv (no bias) + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        pad = 0 if kernel == 1 else dilation
        self.atrous_conv = nn.Conv2d(
            in_channels, out_channels, kernel, padding=pad, dilation=dilation, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.atrous_conv(x)))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1 and 3x3 at dilations 6/12/18 + global pool branch.

    x [B', C_in, h, w] -> [B', C_in, h, w] (concat 5 x mid -> 1x1 conv + BN + ReLU + Dropout 0.5).
    """

    def __init__(self, in_channels: int, mid_channels: int) -> None:
        super().__init__()
        self.aspp1 = _ASPPBranch(in_channels, mid_channels, 1, 1)
        self.aspp2 = _ASPPBranch(in_channels, mid_channels, 3, 6)
        self.aspp3 = _ASPPBranch(in_channels, mid_channels, 3, 12)
        self.aspp4 = _ASPPBranch(in_channels, mid_channels, 3, 18)
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Conv2d(in_channels, mid_channels, 1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(),
        )
        self.conv1 = nn.Conv2d(5 * mid_channels, in_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.5)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.global_avg_pool(x)
        pooled = F.interpolate(pooled, size=x.shape[2:], mode="bilinear", align_corners=True)
        y = torch.cat([self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x), pooled], dim=1)
        return self.dropout(self.relu(self.bn1(self.conv1(y))))


class DeformConv2dPack(nn.Module):
    """Deformable conv v1 (3x3, padding 1, no bias) with its own zero-initialised offset conv.

    ``weight`` [C_out, C_in / groups, 3, 3]; ``conv_offset`` 3x3 C_in -> 18 (with bias; offsets
    (dy, dx) per tap, one deformable group, torchvision's layout). x [B', C_in, h, w] ->
    [B', C_out, h, w]. With zero offsets it equals a grouped 3x3 convolution. ``exportable``:
    computed by :func:`~labeldistill.ops.deform_conv.deform_conv2d_plain` (standard ONNX ops)
    instead of torchvision's kernel; same weights, same result to float precision.
    """

    def __init__(
        self, in_channels: int, out_channels: int, groups: int, *, exportable: bool = False
    ) -> None:
        super().__init__()
        self.groups = groups
        self.exportable = exportable
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"DCN channels {in_channels}/{out_channels} not divisible by groups {groups}"
            )
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, 3, 3))
        self.conv_offset = nn.Conv2d(in_channels, 2 * 3 * 3, 3, padding=1, bias=True)
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        offset = self.conv_offset(x)
        if self.exportable:
            return deform_conv2d_plain(
                x, offset.to(x.dtype), self.weight.to(x.dtype), 1, self.groups
            )
        return deform_conv2d(x, offset.to(x.dtype), self.weight.to(x.dtype), padding=(1, 1))


@dataclass
class DepthNetOutput:
    """depth_logits [B', D, h, w] (softmax over D gives the depth distribution);
    context [B', C, h, w]."""

    depth_logits: Tensor
    context: Tensor


class DepthNet(nn.Module):
    """Camera-aware depth and context network.

    forward(x [B*N, C_in, h, w], cam [B, N, 27]) -> :class:`DepthNetOutput` with D depth logits
    and C context channels. ``cfg.use_aspp`` / ``cfg.use_dcn`` = False replace those stages by
    identities (tiny configs); the indices of ``depth_conv`` stay as published. ``exportable``
    selects the plain deformable convolution (ONNX export).
    """

    def __init__(
        self,
        cfg: DepthNetConfig,
        in_channels: int,
        context_channels: int,
        depth_channels: int,
        *,
        exportable: bool = False,
    ) -> None:
        super().__init__()
        mid = cfg.mid_channels
        self.depth_channels = depth_channels
        self.context_channels = context_channels
        self.reduce_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=True),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
        )
        self.context_conv = nn.Conv2d(mid, context_channels, 1)
        self.bn = nn.BatchNorm1d(CAMERA_VECTOR_DIM)
        self.depth_mlp = Mlp(CAMERA_VECTOR_DIM, mid, mid)
        self.depth_se = SELayer(mid)
        self.context_mlp = Mlp(CAMERA_VECTOR_DIM, mid, mid)
        self.context_se = SELayer(mid)
        self.depth_conv = nn.Sequential(
            BasicBlock(mid, mid),
            BasicBlock(mid, mid),
            BasicBlock(mid, mid),
            ASPP(mid, mid) if cfg.use_aspp else nn.Identity(),
            DeformConv2dPack(mid, mid, cfg.dcn_groups, exportable=exportable)
            if cfg.use_dcn
            else nn.Identity(),
            nn.Conv2d(mid, depth_channels, 1),
        )

    def forward(self, x: Tensor, cam: Tensor) -> DepthNetOutput:
        b, n = cam.shape[:2]
        if x.shape[0] != b * n:
            raise ValueError(f"DepthNet: {x.shape[0]} feature maps for {b} x {n} cameras")
        # Quirk 31: the camera vector enters its BatchNorm1d in fp32 (built from the fp32
        # matrices, batch norm is no autocast op); the MLPs after it follow autocast.
        with torch.autocast(device_type=cam.device.type, enabled=False):
            v = self.bn(cam.reshape(b * n, CAMERA_VECTOR_DIM).to(self.bn.weight.dtype))
        x = self.reduce_conv(x)
        ctx_v = self.context_mlp(v)[..., None, None]
        context = self.context_conv(self.context_se(x, ctx_v))
        depth_v = self.depth_mlp(v)[..., None, None]
        depth = self.depth_conv(self.depth_se(x, depth_v))
        return DepthNetOutput(depth_logits=depth, context=context)
