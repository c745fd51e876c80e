"""CenterPoint LiDAR teacher (METHOD.md 5): voxelise -> mean VFE -> SparseEncoder -> SECOND ->
SECOND-FPN -> CenterHead.

Sub-module names follow the published ``centerpoint.*`` keys (METHOD.md 12.1):
``pts_middle_encoder``, ``pts_backbone``, ``pts_neck``, ``pts_bbox_head``; voxelisation and the
VFE have no parameters. Sparse-conv weights are stored as [kD, kH, kW, in, out], so released
checkpoints load without conversion (spconv-2.x checkpoints: ``convert_state_dict``).

The BEV output of the encoder must land on the shared BEV grid (``GridConfig``): with the paper
config 1024 voxels of 0.1 m, downsampled 8x, give 128 cells of 0.8 m.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from labeldistill.config import DistillConfig, GridConfig, LidarTeacherConfig
from labeldistill.errors import ConfigError
from labeldistill.models.center_head import CenterHead
from labeldistill.models.common import SECONDFPN
from labeldistill.models.second import SECOND
from labeldistill.models.sparse_encoder import SparseEncoder
from labeldistill.ops.voxelize import BatchVoxels, mean_voxel_features, voxelize_batch
from labeldistill.structures import Batch, Detections, HeadOutput, TeacherOutput


def _check_grid(cfg: LidarTeacherConfig, grid: GridConfig, bev_shape: tuple[int, int]) -> None:
    """The teacher's BEV must cover the shared grid cell for cell."""
    pr = cfg.point_range
    if len(pr) != 6:
        raise ConfigError(f"lidar_teacher.point_range must have 6 values, got {pr!r}")
    if (
        abs(pr[0] - grid.x_bound[0]) > 1e-6
        or abs(pr[3] - grid.x_bound[1]) > 1e-6
        or abs(pr[1] - grid.y_bound[0]) > 1e-6
        or abs(pr[4] - grid.y_bound[1]) > 1e-6
    ):
        raise ConfigError(
            f"lidar_teacher.point_range {tuple(pr)} must span grid.x_bound / grid.y_bound "
            f"({grid.x_bound[:2]}, {grid.y_bound[:2]}): set the same x/y limits"
        )
    if bev_shape != (grid.size_y, grid.size_x):
        raise ConfigError(
            f"lidar_teacher: voxel_size {tuple(cfg.voxel_size)} with "
            f"{len(cfg.encoder_channels) - 1} "
            f"strided stages gives a {bev_shape[0]}x{bev_shape[1]} BEV, the grid is "
            f"{grid.size_y}x{grid.size_x}: make voxel_size[0:2] * 2**(stages-1) equal the grid "
            "cell size"
        )


class LidarTeacher(nn.Module):
    """CenterPoint on points [B, P, C>=in_channels] (x, y, z, intensity, time lag, ...).

    forward(points) -> TeacherOutput(feats=(SECOND level 0 [B, 128, Y, X],
    level 1 [B, 256, Y/2, X/2]), head=HeadOutput on the Y x X grid). Rows outside
    ``point_range`` (e.g. the -999 padding) are ignored. The voxel cap is
    ``max_voxels_train`` in training mode, ``max_voxels_eval`` otherwise.

    As the stage-1 model: :meth:`forward_batch` (the batch's points), :meth:`loss`
    (``weights.det_weight`` times the CenterPoint terms) and :meth:`detect`.
    """

    def __init__(
        self, cfg: LidarTeacherConfig, grid: GridConfig, weights: DistillConfig | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.weights = weights if weights is not None else DistillConfig()
        self.grid = grid
        self.pts_middle_encoder = SparseEncoder(cfg)
        _check_grid(cfg, grid, self.pts_middle_encoder.bev_shape)
        self.pts_backbone = SECOND(
            self.pts_middle_encoder.bev_channels,
            cfg.second_out_channels,
            cfg.second_layer_nums,
            cfg.second_strides,
        )
        self.pts_neck = SECONDFPN(
            cfg.second_out_channels,
            cfg.neck_out_channels,
            cfg.neck_upsample_strides,
            use_conv_for_no_stride=True,
        )
        self.pts_bbox_head = CenterHead(self.pts_neck.out_channels, grid, cfg.head)

    @property
    def max_voxels(self) -> int:
        return self.cfg.max_voxels_train if self.training else self.cfg.max_voxels_eval

    def voxelize(self, points: Tensor) -> BatchVoxels:
        """points [B, P, C] -> voxels of the whole batch (coors (b, z, y, x))."""
        if points.dim() != 3 or points.shape[2] < self.cfg.in_channels:
            raise ValueError(
                f"LiDAR points must be [B, P, >={self.cfg.in_channels}], got {tuple(points.shape)}"
            )
        return voxelize_batch(
            points.detach(),
            self.cfg.voxel_size,
            self.cfg.point_range,
            self.cfg.max_points_per_voxel,
            self.max_voxels,
        )

    def bev_features(self, points: Tensor) -> Tensor:
        """points [B, P, C] -> dense BEV of the sparse encoder [B, C_bev, Y, X] (float32).

        Voxelisation, the mean VFE and the sparse encoder run in float32 whatever the ambient
        autocast (quirk 29: mmcv's hard voxelisation and mean VFE are fp32 and its sparse convs
        are not autocast ops); SECOND, neck and head after it follow autocast.
        """
        with torch.autocast(device_type=points.device.type, enabled=False):
            vox = self.voxelize(points.float())
            feats = mean_voxel_features(vox.voxels, vox.num_points, self.cfg.in_channels)
        return self.pts_middle_encoder(feats, vox.coors, int(points.shape[0]))

    def extract_feats(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """points [B, P, C] -> the two SECOND outputs [B, 128, Y, X], [B, 256, Y/2, X/2]."""
        levels = self.pts_backbone(self.bev_features(points))
        if len(levels) != 2:
            raise ConfigError(
                f"lidar_teacher.second_out_channels has {len(levels)} stages: the distillation "
                "needs 2"
            )
        return levels[0], levels[1]

    def decode_features(self, feats: tuple[Tensor, Tensor] | list[Tensor]) -> HeadOutput:
        """SECOND-space features (two levels) -> neck -> CenterHead outputs."""
        return self.pts_bbox_head(self.pts_neck(list(feats)))

    def forward(self, points: Tensor) -> TeacherOutput:
        """points [B, P, C] -> :class:`TeacherOutput`."""
        feats = self.extract_feats(points)
        return TeacherOutput(feats=feats, head=self.decode_features(feats))

    def forward_batch(self, batch: Batch) -> TeacherOutput:
        """:meth:`forward` on the batch's points [B, P, C]."""
        if batch.lidar_points is None:
            raise RuntimeError(
                "the lidar_teacher stage needs points: data.return_lidar must be true"
            )
        return self(batch.lidar_points)

    def loss(self, out: TeacherOutput, batch: Batch) -> dict[str, Tensor]:
        """L = det_weight * (L_heatmap + L_bbox) (METHOD.md 5.1, 8.1): ``det_heatmap``,
        ``det_bbox``."""
        head = self.pts_bbox_head
        det = head.loss(out.head, head.get_targets(batch.gt_boxes, batch.gt_labels))
        return {f"det_{k}": self.weights.det_weight * v for k, v in det.items()}

    def detect(self, batch: Batch) -> list[Detections]:
        """Per-sample detections from the batch's points."""
        return self.pts_bbox_head.decode(self.forward_batch(batch).head)
