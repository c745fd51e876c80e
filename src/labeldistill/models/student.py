"""The BEVDepth camera student (METHOD.md 4): LSS backbone + BEV encoder + CenterPoint head.

State-dict layout as the published ``LabelDistill`` model (METHOD.md 12.1): ``backbone.*``
(:class:`~labeldistill.models.view_transform.LSSBackbone`) and ``head.trunk.*``,
``head.neck.*``, ``head.shared_conv.*``, ``head.task_heads.*`` (:class:`StudentHead`, a
CenterHead that also owns the BEV trunk and neck, like the original ``KDHead``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from labeldistill.config import DataConfig, DistillConfig, GridConfig, StudentConfig
from labeldistill.models.bev_encoder import BevEncoder
from labeldistill.models.center_head import CenterHead
from labeldistill.models.depth_loss import depth_loss
from labeldistill.models.view_transform import LSSBackbone
from labeldistill.ops.image_norm import normalize_images
from labeldistill.structures import Batch, Detections, StudentOutput


class StudentHead(CenterHead):
    """CenterHead plus the BEV trunk and neck (``KDHead``).

    ``trunk`` and ``neck`` are the modules of a :class:`BevEncoder` (registered here, so their
    keys are ``head.trunk.*`` / ``head.neck.*``); :meth:`encode` runs that encoder.
    """

    def __init__(self, in_channels: int, grid: GridConfig, cfg: StudentConfig) -> None:
        encoder = BevEncoder(in_channels, cfg.bev_encoder)
        super().__init__(encoder.out_channels, grid, cfg.head)
        self.trunk = encoder.trunk
        self.neck = encoder.neck
        # Held in a tuple so that nn.Module does not register it a second time (its trunk and
        # neck are the modules registered above; .to()/.train() reach them through those).
        self._encoder = (encoder,)

    def encode(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x [B, F*C, Y, X] -> (neck [B, 256, Y, X], (x fp32, trunk layer1 [B, C1, Y/2, X/2]))."""
        return self._encoder[0](x)


class BEVDepthStudent(nn.Module):
    """BEVDepth camera detector for ``num_frames`` key frames at network input ``image_size``.

    forward(imgs [B, F, N, 3, H, W], ego_from_camera [B, F, N, 4, 4], intrinsics [B, F, N, 4, 4],
    ida [B, F, N, 4, 4], bda [B, 4, 4]) -> :class:`StudentOutput` (head outputs on the Y x X
    grid, key-frame depth probabilities [B*N, D, h, w], distillation levels
    ([B, F*C, Y, X], [B, C1, Y/2, X/2])). ``imgs`` are normalised float, or uint8 in the
    network's channel order, then normalised on their device with ``img_mean`` / ``img_std``
    (the data config's statistics, bit-identical to the dataset's float32 normalisation).

    As a stage model (the paper's baseline): :meth:`forward_batch`, :meth:`loss` with the
    weights ``weights.det_weight`` / ``weights.depth_weight`` (config section ``distill``) and
    :meth:`detect`. ``exportable=True`` builds the same network with standard-ONNX ops
    (:mod:`labeldistill.export.onnx` exports it; same state dict).
    """

    def __init__(
        self,
        cfg: StudentConfig,
        grid: GridConfig,
        num_frames: int,
        image_size: tuple[int, int],
        img_mean: Sequence[float] = DataConfig.img_mean,
        img_std: Sequence[float] = DataConfig.img_std,
        weights: DistillConfig | None = None,
        exportable: bool = False,
    ) -> None:
        super().__init__()
        self.exportable = exportable
        self.weights = weights if weights is not None else DistillConfig()
        self.img_mean = tuple(float(v) for v in img_mean)
        self.img_std = tuple(float(v) for v in img_std)
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.cfg = cfg
        self.grid = grid
        self.num_frames = num_frames
        self.backbone = LSSBackbone(cfg, grid, image_size, exportable=exportable)
        self.head = StudentHead(num_frames * cfg.view_transform.context_channels, grid, cfg)

    def forward(
        self, imgs: Tensor, ego_from_camera: Tensor, intrinsics: Tensor, ida: Tensor, bda: Tensor
    ) -> StudentOutput:
        if imgs.dim() != 6 or imgs.shape[1] != self.num_frames:
            raise ValueError(
                f"student built for {self.num_frames} frames expects imgs [B, {self.num_frames}, "
                f"N, 3, H, W], got {tuple(imgs.shape)}"
            )
        if imgs.dtype == torch.uint8:  # shipped unnormalised: normalise here, on the device
            imgs = normalize_images(imgs, self.img_mean, self.img_std)
        lss = self.backbone(imgs, ego_from_camera, intrinsics, ida, bda)
        neck, feats = self.head.encode(lss.bev)
        return StudentOutput(head=self.head(neck), depth=lss.depth, distill_feats=feats)

    def forward_batch(self, batch: Batch) -> StudentOutput:
        """:meth:`forward` on a batch's cameras (shapes as there)."""
        return self(batch.imgs, batch.ego_from_camera, batch.intrinsics, batch.ida, batch.bda)

    def loss(self, out: StudentOutput, batch: Batch) -> dict[str, Tensor]:
        """Weighted terms of L = det_weight * (L_heatmap + L_bbox) + depth_weight * L_depth
        (METHOD.md 8.1, 8.2): ``det_heatmap``, ``det_bbox``, ``depth`` (scalars)."""
        w = self.weights
        det = self.loss_detection(out, batch.gt_boxes, batch.gt_labels)
        terms = {f"det_{k}": w.det_weight * v for k, v in det.items()}
        if batch.depth is None:
            raise RuntimeError("the student stage needs depth maps: data.return_depth must be true")
        terms["depth"] = w.depth_weight * self.loss_depth(out, batch.depth)
        return terms

    def detect(self, batch: Batch) -> list[Detections]:
        """Per-sample detections of a batch (METHOD.md 4.7)."""
        return self.decode(self.forward_batch(batch))

    def loss_detection(
        self, out: StudentOutput, gt_boxes: list[Tensor], gt_labels: list[Tensor]
    ) -> dict[str, Tensor]:
        """CenterPoint loss terms ``{"heatmap", "bbox"}`` (METHOD.md 8.1) for B samples."""
        return self.head.loss(out.head, self.head.get_targets(gt_boxes, gt_labels))

    def loss_depth(self, out: StudentOutput, depth_gt: Tensor) -> Tensor:
        """Unweighted depth loss (METHOD.md 8.2) of the key frame; depth_gt [B, N, H, W] metres.
        :meth:`loss` multiplies it by ``weights.depth_weight`` (3.0)."""
        return depth_loss(
            out.depth, depth_gt, self.cfg.view_transform.downsample, self.grid.d_bound
        )

    def decode(self, out: StudentOutput) -> list[Detections]:
        """Per-sample detections (METHOD.md 4.7)."""
        return self.head.decode(out.head)
