"""Stage 0 (optional, ours; not in the paper): the student's image backbone pretrained on
semantic 2D segmentation, a stand-in for the ImageNet weights that cannot be downloaded here.

The paper's student starts from an ImageNet ResNet. On the synthetic set a random-init camera
student learns too slowly on a CPU to be measured (benchmarks/RESULTS.md), so the benchmark
may first train the same ResNet to label every pixel of the camera renders with its object
class (semantic supervision only: no depth, no 3D boxes), then start every camera student,
baseline and distilled alike, from that backbone. Depth still has to come from the students'
own depth loss and from the teachers.

Network: :class:`~labeldistill.models.image_backbone.ResNetBackbone` (C2..C5) + a light FPN
decoder (1x1 lateral projections summed top-down to stride 4, one 3x3 conv) and a 1x1
classifier; logits are upsampled bilinearly to the input size. Loss: per-pixel cross
entropy, background pixels weighted ``background_weight`` (objects cover a few % of a render).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labeldistill.config import ImageBackboneConfig
from labeldistill.models.image_backbone import ResNetBackbone


@dataclass
class SegOutput:
    """logits [B', K, H, W] (input resolution)."""

    logits: Tensor


class SegmentationNet(nn.Module):
    """ResNet backbone + FPN decoder for per-pixel classes.

    x: [B', 3, H, W] (H, W multiples of 32) -> :class:`SegOutput` with K = ``num_classes``.
    ``backbone`` has the student's keys (torchvision layout), so its state dict loads into
    ``student.backbone.img_backbone`` one to one.
    """

    def __init__(
        self, backbone_cfg: ImageBackboneConfig, num_classes: int, decoder_channels: int = 64
    ) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(backbone_cfg)
        self.num_classes = num_classes
        self.lateral = nn.ModuleList(
            nn.Conv2d(c, decoder_channels, 1) for c in self.backbone.out_channels
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(decoder_channels, decoder_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(decoder_channels),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def forward(self, x: Tensor) -> SegOutput:
        feats = self.backbone(x)
        y = self.lateral[-1](feats[-1])
        for level in range(len(feats) - 2, -1, -1):
            lat = self.lateral[level](feats[level])
            y = lat + F.interpolate(y, size=lat.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.fuse(y))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return SegOutput(logits=logits)

    def loss(self, out: SegOutput, target: Tensor, background_weight: float) -> Tensor:
        """Weighted per-pixel cross entropy. target [B', H, W] int64 in [0, K), 0 = background;
        the mean is over the weights (background pixels count ``background_weight``)."""
        weight = torch.ones(self.num_classes, device=out.logits.device, dtype=torch.float32)
        weight[0] = background_weight
        return F.cross_entropy(out.logits.float(), target, weight=weight)


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """[K, K] int64 counts, rows = target class, columns = predicted class."""
    idx = target.reshape(-1) * num_classes + pred.reshape(-1)
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def iou_per_class(conf: Tensor) -> Tensor:
    """[K] intersection over union from a confusion matrix (NaN for a class never seen nor
    predicted)."""
    conf = conf.double()
    tp = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
