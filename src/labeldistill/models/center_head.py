"""CenterPoint detection head shared by the camera student and the LiDAR teacher (METHOD.md 4.6,
4.7, 8.1): shared conv, one separate head per task group, targets, loss and decoding.

Attribute names follow the published state dict (METHOD.md 12.1): ``shared_conv.conv``,
``shared_conv.bn``, ``task_heads.{t}.{reg,height,dim,rot,vel,heatmap}.0.{conv,bn}`` and
``....1`` (the final conv with bias).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from labeldistill.config import GridConfig, HeadConfig
from labeldistill.errors import ConfigError
from labeldistill.models.losses import (
    clip_sigmoid,
    gather_feat,
    gaussian_focal_loss,
    reduce_mean,
    weighted_l1,
)
from labeldistill.ops import box_coder
from labeldistill.ops.gaussian import draw_gaussian, gaussian_radius_tensor
from labeldistill.ops.nms import circle_nms
from labeldistill.structures import (
    BOX_DIM,
    CLASSES,
    TASKS,
    Detections,
    HeadOutput,
    Targets,
    TaskOutput,
)

#: Regression branches of every task head, in code order, with their channel counts.
REG_BRANCHES: tuple[tuple[str, int], ...] = (
    ("reg", 2),
    ("height", 1),
    ("dim", 3),
    ("rot", 2),
    ("vel", 2),
)


class ConvModule(nn.Module):
    """mmcv ConvModule: bias-free conv + BN + ReLU, conv Kaiming-initialised (fan_out, ReLU,
    normal) and BN 1/0 at construction. x: [B, C_in, H, W] -> [B, C_out, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


class SeparateHead(nn.Module):
    """One task head: per branch ``[ConvModule(C, head_conv), Conv2d(head_conv, k, bias)]``.

    The final convs keep PyTorch's default init; the heatmap bias is filled with ``init_bias``
    when it is given (METHOD.md 4.6, quirk 9). x: [B, C, Y, X] -> :class:`TaskOutput`.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        head_conv: int,
        final_kernel: int,
        init_bias: float | None,
    ) -> None:
        super().__init__()
        for name, k in (*REG_BRANCHES, ("heatmap", num_classes)):
            final = nn.Conv2d(head_conv, k, final_kernel, padding=final_kernel // 2, bias=True)
            self.add_module(
                name, nn.Sequential(ConvModule(in_channels, head_conv, final_kernel), final)
            )
        if init_bias is not None:
            nn.init.constant_(self.heatmap[1].bias, init_bias)

    def forward(self, x: Tensor) -> TaskOutput:
        return TaskOutput(
            reg=self.reg(x),
            height=self.height(x),
            dim=self.dim(x),
            rot=self.rot(x),
            vel=self.vel(x),
            heatmap=self.heatmap(x),
        )


class CenterHead(nn.Module):
    """CenterPoint head on a ``grid.size_y x grid.size_x`` BEV map.

    in_channels: channels of the input feature map (256 student, 512 teacher).
    tasks: class-name groups (default :data:`structures.TASKS`); detections are labelled with
    indices into :data:`structures.CLASSES`.
    """

    def __init__(
        self,
        in_channels: int,
        grid: GridConfig,
        cfg: HeadConfig,
        tasks: tuple[tuple[str, ...], ...] = TASKS,
    ) -> None:
        super().__init__()
        for task in tasks:
            for name in task:
                if name not in CLASSES:
                    raise ConfigError(
                        f"head task class '{name}' is not one of {', '.join(CLASSES)}"
                    )
        if len(cfg.nms_radii) != len(tasks):
            raise ConfigError(
                f"head.nms_radii has {len(cfg.nms_radii)} entries for {len(tasks)} tasks: "
                "give one per task"
            )
        if len(cfg.code_weights) != box_coder.CODE_SIZE:
            raise ConfigError(
                f"head.code_weights has {len(cfg.code_weights)} entries: give {box_coder.CODE_SIZE}"
            )
        self.grid = grid
        self.cfg = cfg
        self.tasks = tuple(tuple(t) for t in tasks)
        self.task_class_ids = [[CLASSES.index(n) for n in task] for task in self.tasks]
        self.shared_conv = ConvModule(in_channels, cfg.share_conv_channels, 3)
        self.task_heads = nn.ModuleList(
            SeparateHead(
                cfg.share_conv_channels, len(task), cfg.head_conv, cfg.final_kernel, cfg.init_bias
            )
            for task in self.tasks
        )
        self.register_buffer(
            "code_weights", torch.tensor(cfg.code_weights, dtype=torch.float32), persistent=False
        )

    # ------------------------------------------------------------------------------------
    def forward(self, feat: Tensor) -> HeadOutput:
        """feat: [B, C_in, Y, X] -> one :class:`TaskOutput` per task (maps [B, k, Y, X]).

        Runs in float32 with autocast disabled (as the published student head, METHOD.md 4.5).
        """
        with torch.autocast(device_type=feat.device.type, enabled=False):
            x = self.shared_conv(feat.float())
            return HeadOutput([head(x) for head in self.task_heads])

    # ------------------------------------------------------------------------------------
    @torch.no_grad()
    def get_targets(self, gt_boxes: list[Tensor], gt_labels: list[Tensor]) -> Targets:
        """Training targets (METHOD.md 4.6).

        gt_boxes: B tensors [M_b, 9] (ego frame); gt_labels: B tensors [M_b] int64 class indices.
        Within a task, boxes are ordered by class, then annotation order, and cut at
        ``max_objs``; slot k keeps a zero entry and mask False when box k has a size <= 0 or
        its truncated centre cell lies outside the grid.
        """
        grid, cfg = self.grid, self.cfg
        ny, nx = grid.size_y, grid.size_x
        b = len(gt_boxes)
        device = gt_boxes[0].device if b else torch.device("cpu")
        dtype = gt_boxes[0].dtype if b else torch.float32
        heatmaps = [torch.zeros(b, len(t), ny, nx, dtype=dtype, device=device) for t in self.tasks]
        anno_boxes = [
            torch.zeros(b, cfg.max_objs, box_coder.CODE_SIZE, dtype=dtype, device=device)
            for _ in self.tasks
        ]
        inds = [torch.zeros(b, cfg.max_objs, dtype=torch.long, device=device) for _ in self.tasks]
        masks = [torch.zeros(b, cfg.max_objs, dtype=torch.bool, device=device) for _ in self.tasks]
        for i in range(b):
            boxes = gt_boxes[i].reshape(-1, BOX_DIM)
            labels = gt_labels[i].to(device=boxes.device, dtype=torch.long).reshape(-1)
            if boxes.shape[0] == 0:
                continue
            code, cells = box_coder.encode(boxes, grid)
            l_cells = boxes[:, 3] / grid.x_bound[2]
            w_cells = boxes[:, 4] / grid.y_bound[2]
            valid = (l_cells > 0) & (w_cells > 0) & box_coder.cells_in_grid(cells, grid)
            radius = gaussian_radius_tensor(w_cells, l_cells, cfg.gaussian_overlap)
            radius = torch.where(valid, radius, torch.zeros_like(radius))
            radius = radius.to(torch.int64).clamp(min=cfg.min_radius)
            flat = cells[:, 1] * nx + cells[:, 0]
            for t, class_ids in enumerate(self.task_class_ids):
                members = [torch.nonzero(labels == c).flatten() for c in class_ids]
                idx = torch.cat(members)[: cfg.max_objs]
                cls_in_task = torch.cat([torch.full_like(m, j) for j, m in enumerate(members)])[
                    : cfg.max_objs
                ]
                n = int(idx.numel())
                if n == 0:
                    continue
                ok = valid[idx]
                anno_boxes[t][i, :n] = torch.where(
                    ok[:, None], code[idx], torch.zeros_like(code[idx])
                )
                inds[t][i, :n] = torch.where(ok, flat[idx], torch.zeros_like(flat[idx]))
                masks[t][i, :n] = ok
                draw = ok.nonzero().flatten()
                rows = torch.stack(
                    [
                        cls_in_task[draw],
                        cells[idx[draw], 0],
                        cells[idx[draw], 1],
                        radius[idx[draw]],
                    ],
                    dim=1,
                ).tolist()
                for j, x, y, r in rows:
                    draw_gaussian(heatmaps[t][i, j], (x, y), r)
        return Targets(heatmaps=heatmaps, anno_boxes=anno_boxes, inds=inds, masks=masks)

    # ------------------------------------------------------------------------------------
    def loss(self, out: HeadOutput, targets: Targets) -> dict[str, Tensor]:
        """Detection loss (METHOD.md 8.1), summed over tasks.

        Returns ``{"heatmap": sum_t FL_t / num_pos_t, "bbox": loss_bbox_weight * sum_t L1_t /
        (num_box_t + eps)}``; the detection loss is the sum of the two values. ``num_pos`` (GT
        heatmap entries equal to 1) and ``num_box`` (valid boxes) are averaged over processes
        and clamped at 1 and 1e-4.
        """
        eps = torch.finfo(torch.float32).eps
        loss_heatmap: Tensor | None = None
        loss_bbox: Tensor | None = None
        for t, task_out in enumerate(out.tasks):
            pred_heat = clip_sigmoid(task_out.heatmap.float())
            target_heat = targets.heatmaps[t].to(pred_heat)
            num_pos = reduce_mean(target_heat.eq(1).sum().to(pred_heat)).clamp(min=1.0)
            hm = gaussian_focal_loss(pred_heat, target_heat) / num_pos

            target_box = targets.anno_boxes[t].to(pred_heat)
            pred_box = gather_feat(task_out.box_code().float(), targets.inds[t])  # [B, K, 10]
            mask = targets.masks[t].to(pred_heat)
            num_box = reduce_mean(mask.sum()).clamp(min=1e-4)
            weights = mask[:, :, None] * self.code_weights.to(pred_heat)
            bb = weighted_l1(pred_box, target_box, weights) / (num_box + eps)

            loss_heatmap = hm if loss_heatmap is None else loss_heatmap + hm
            loss_bbox = bb if loss_bbox is None else loss_bbox + bb
        assert loss_heatmap is not None and loss_bbox is not None
        return {"heatmap": loss_heatmap, "bbox": self.cfg.loss_bbox_weight * loss_bbox}

    # ------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, out: HeadOutput) -> list[Detections]:
        """Detections per sample (METHOD.md 4.7): per task sigmoid, top-k, score threshold, range
        filter and circle NMS (``nms_radii[t]`` squared metres, at most ``post_max_size``);
        labels are indices into :data:`structures.CLASSES`; tasks concatenated in order.
        """
        cfg = self.cfg
        params = box_coder.DecodeParams(cfg.max_num, cfg.score_threshold, cfg.post_center_range)
        per_sample: list[list[Detections]] = []
        for t, task_out in enumerate(out.tasks):
            dets = box_coder.decode(
                task_out.heatmap.float().sigmoid(), task_out.box_code().float(), self.grid, params
            )
            class_ids = torch.tensor(
                self.task_class_ids[t], dtype=torch.long, device=task_out.heatmap.device
            )
            for i, d in enumerate(dets):
                keep = circle_nms(d.boxes[:, :2], d.scores, cfg.nms_radii[t], cfg.post_max_size)
                kept = Detections(d.boxes[keep], d.scores[keep], class_ids[d.labels[keep]])
                if t == 0:
                    per_sample.append([kept])
                else:
                    per_sample[i].append(kept)
        return [
            Detections(
                torch.cat([d.boxes for d in ds]),
                torch.cat([d.scores for d in ds]),
                torch.cat([d.labels for d in ds]),
            )
            for ds in per_sample
        ]
