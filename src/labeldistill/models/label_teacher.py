"""Stage 2 (METHOD.md 6.3): the label encoder decoded by the frozen LiDAR teacher's neck + head.

Only the label encoder learns; gradients flow *through* the frozen neck and head (their
parameters have ``requires_grad=False``) into the label encoder. The teacher stays in eval mode
(the published code lets its BatchNorms run in train mode, quirk 6; docs/deviations.md).
"""

from __future__ import annotations

from torch import nn

from labeldistill.models.label_encoder import LabelEncoder
from labeldistill.models.labeldistill import freeze
from labeldistill.structures import LabelMaps, TeacherOutput


class LabelTeacher(nn.Module):
    """Label encoder + frozen LiDAR teacher decoder.

    forward(label_maps) -> TeacherOutput(feats = label-encoder features, head = teacher neck+head
    applied to them); the teacher's ``decode_features(feats) -> HeadOutput`` is used.
    """

    def __init__(self, label_encoder: LabelEncoder, lidar_teacher: nn.Module) -> None:
        super().__init__()
        self.label_encoder = label_encoder
        self.lidar_teacher = freeze(lidar_teacher)

    def train(self, mode: bool = True) -> LabelTeacher:
        super().train(mode)
        self.lidar_teacher.eval()
        return self

    def forward(self, label_maps: LabelMaps) -> TeacherOutput:
        feats = self.label_encoder(label_maps.box, label_maps.label)
        head = self.lidar_teacher.decode_features(feats)
        return TeacherOutput(feats=feats, head=head)
