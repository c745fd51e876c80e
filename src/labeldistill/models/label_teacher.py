"""Stage 2 (METHOD.md 6.3): the label encoder decoded by the frozen LiDAR teacher's neck + head.

Only the label encoder learns; gradients flow *through* the frozen neck and head (their
parameters have ``requires_grad=False``) into the label encoder. The teacher stays in eval mode
(the published code lets its BatchNorms run in train mode, quirk 6; docs/deviations.md).
"""

from __future__ import annotations

from torch import Tensor, nn

from labeldistill.config import DistillConfig
from labeldistill.models.common import freeze
from labeldistill.models.label_encoder import LabelEncoder
from labeldistill.models.lidar_teacher import LidarTeacher
from labeldistill.structures import Batch, Detections, LabelMaps, TeacherOutput


class LabelTeacher(nn.Module):
    """Label encoder + frozen LiDAR teacher decoder.

    forward(label_maps) -> TeacherOutput(feats = label-encoder features, head = teacher neck+head
    applied to them); the teacher's ``decode_features(feats) -> HeadOutput`` is used.

    As the stage-2 model: :meth:`forward_batch` rasterises the batch's GT (with the teacher
    head's ``max_objs``), :meth:`loss` is the teacher head's detection loss on the GT targets
    times ``weights.det_weight``, :meth:`detect` decodes the GT of a batch through the frozen
    teacher (the label-encoder "upper bound").
    """

    def __init__(
        self,
        label_encoder: LabelEncoder,
        lidar_teacher: LidarTeacher,
        weights: DistillConfig | None = None,
    ) -> None:
        super().__init__()
        self.label_encoder = label_encoder
        self.lidar_teacher = freeze(lidar_teacher)
        self.weights = weights if weights is not None else DistillConfig()

    def train(self, mode: bool = True) -> LabelTeacher:
        super().train(mode)
        self.lidar_teacher.eval()
        return self

    def forward(self, label_maps: LabelMaps) -> TeacherOutput:
        feats = self.label_encoder(label_maps.box, label_maps.label)
        head = self.lidar_teacher.decode_features(feats)
        return TeacherOutput(feats=feats, head=head)

    def label_maps(self, batch: Batch) -> LabelMaps:
        """Label maps of the batch's (bda-augmented) GT, ``max_objs`` of the teacher head."""
        max_objs = self.lidar_teacher.pts_bbox_head.cfg.max_objs
        return self.label_encoder.label_maps(batch.gt_boxes, batch.gt_labels, max_objs)

    def forward_batch(self, batch: Batch) -> TeacherOutput:
        """:meth:`forward` on the label maps of the batch's GT."""
        return self(self.label_maps(batch))

    def loss(self, out: TeacherOutput, batch: Batch) -> dict[str, Tensor]:
        """L = det_weight * the teacher head's CenterPoint loss (code_weights [1 x 8, 0.5, 0.5])
        on the GT targets (METHOD.md 6.3): ``det_heatmap``, ``det_bbox``."""
        head = self.lidar_teacher.pts_bbox_head
        det = head.loss(out.head, head.get_targets(batch.gt_boxes, batch.gt_labels))
        return {f"det_{k}": self.weights.det_weight * v for k, v in det.items()}

    def detect(self, batch: Batch) -> list[Detections]:
        """The batch's GT decoded through label encoder and frozen teacher head."""
        return self.lidar_teacher.pts_bbox_head.decode(self.forward_batch(batch).head)
