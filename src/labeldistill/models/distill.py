"""Feature partitioning, the student adaptors and the distillation losses (METHOD.md 7, 8.3, 8.4).

Partitioning ("thirds", the published rule): of each distillation level S_i of the student
(S0 = BEV input [B, F*C, Y, X], S1 = trunk layer 1 [B, C1, Y/2, X/2]) the first third of the
channels goes to the label adaptor, the second third to the LiDAR adaptor, the last third is left
to the student. "none" (ablation) gives all channels to both adaptors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labeldistill.models.common import BasicBlock
from labeldistill.models.losses import (
    clip_sigmoid,
    gather_feat,
    gaussian_focal_loss,
    reduce_mean,
    weighted_l1,
)
from labeldistill.structures import HeadOutput, Targets


def partition_slices(channels: int, mode: str) -> tuple[slice, slice]:
    """Channel slices (label, lidar) of a student level with ``channels`` channels."""
    if mode == "thirds":
        third = channels // 3
        return slice(0, third), slice(third, 2 * third)
    if mode == "none":
        return slice(0, channels), slice(0, channels)
    raise ValueError(f"partition must be 'thirds' or 'none', got {mode!r}")


def partition_channels(channels: int, mode: str) -> int:
    """Input channels of an adaptor for a student level with ``channels`` channels."""
    s, _ = partition_slices(channels, mode)
    return s.stop - s.start


class DistillAdaptor(nn.Module):
    """Maps student feature slices onto a teacher's two feature levels (``DistillAdaptor``).

    Per level: Conv3x3 (replicate padding, bias) + BN + ReLU + BasicBlock. Attribute
    ``blocks.{i}.{0,1,3}`` as the published state dict.
    feats: ([B, in0, Y, X], [B, in1, Y/2, X/2]) -> ([B, out0, Y, X], [B, out1, Y/2, X/2]).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: Sequence[int] = (128, 256),
        strides: Sequence[int] = (1, 1),
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, s, 1, padding_mode="replicate"),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                BasicBlock(c_out),
            )
            for c_in, c_out, s in zip(in_channels, out_channels, strides)
        )

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        a, b = (block(f) for block, f in zip(self.blocks, feats))
        return a, b


def heatmap_weights(targets: Targets, binary: bool) -> tuple[Tensor, Tensor]:
    """Feature-loss weights from the GT heatmaps (METHOD.md 8.3).

    W0 = sum of all class heatmaps of all tasks [B, 1, Y, X]; W1 = bilinear resize to half size
    (align_corners=True). ``binary``: W > 0 -> 1 (label teacher); else soft (LiDAR teacher).
    """
    w0 = torch.cat(targets.heatmaps, dim=1).sum(dim=1, keepdim=True)
    if binary:
        w0 = (w0 > 0).to(w0.dtype)
    h, w = w0.shape[-2] // 2, w0.shape[-1] // 2
    w1 = F.interpolate(w0, size=(h, w), mode="bilinear", align_corners=True)
    if binary:
        w1 = (w1 > 0).to(w0.dtype)
    return w0, w1


def weighted_feature_loss(teacher: Tensor, student: Tensor, weight: Tensor) -> Tensor:
    """sum_{b,h,w} W * sum_c (T - A)^2 / max(1, sum W).

    teacher, student: [B, C, H, W]; weight: [B, 1, H, W]. Computed in float32 (float64 for
    float64 inputs) whatever the input dtypes or the ambient autocast: in fp16 the squared
    difference summed over channels overflows once features reach a few hundred.
    """
    dtype = torch.promote_types(torch.promote_types(teacher.dtype, student.dtype), torch.float32)
    with torch.autocast(student.device.type, enabled=False):
        diff = teacher.to(dtype) - student.to(dtype)
        sq = (diff * diff).sum(dim=1, keepdim=True)
        w = weight.to(dtype)
        return (sq * w).sum() / w.sum().clamp(min=1.0)


def feature_distill_loss(
    teacher_feats: Sequence[Tensor], adapted: Sequence[Tensor], targets: Targets, binary: bool
) -> Tensor:
    """L_feat = L_0 + L_1 of METHOD.md 8.3 (teacher features are treated as constants)."""
    w0, w1 = heatmap_weights(targets, binary)
    return weighted_feature_loss(teacher_feats[0].detach(), adapted[0], w0) + (
        weighted_feature_loss(teacher_feats[1].detach(), adapted[1], w1)
    )


def response_distill_loss(
    student: HeadOutput,
    teacher: HeadOutput,
    targets: Targets,
    code_weights: Sequence[float],
    bbox_weight: float = 0.25,
) -> Tensor:
    """L_resp of METHOD.md 8.4 (LiDAR teacher only).

    Per task: focal(P, T * Y) / num_pos + bbox_weight * sum m * cw * |p - t| / (N_box + eps),
    with P, T clipped sigmoids of student / teacher heatmaps, Y the GT heatmap, and p, t the raw
    10-channel box codes of student / teacher gathered at the GT centre indices.
    """
    total = student.tasks[0].heatmap.new_zeros(())
    cw = torch.as_tensor(code_weights, dtype=total.dtype, device=total.device)
    eps = torch.finfo(torch.float32).eps
    for t, (s_out, t_out) in enumerate(zip(student.tasks, teacher.tasks)):
        gt = targets.heatmaps[t]
        p = clip_sigmoid(s_out.heatmap.float())
        q = clip_sigmoid(t_out.heatmap.float()).detach()
        num_pos = reduce_mean(gt.eq(1).float().sum()).clamp(min=1.0)
        total = total + gaussian_focal_loss(p, q * gt) / num_pos
        inds, mask = targets.inds[t], targets.masks[t].float()
        s_code = gather_feat(s_out.box_code().float(), inds)  # [B, K, 10]
        t_code = gather_feat(t_out.box_code().float(), inds).detach()
        num_box = reduce_mean(mask.sum()).clamp(min=1e-4)
        l1 = weighted_l1(s_code, t_code, cw * mask.unsqueeze(-1))
        total = total + bbox_weight * l1 / (num_box + eps)
    return total
