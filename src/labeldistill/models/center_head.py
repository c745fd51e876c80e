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
        # class index of every task channel, tasks concatenated (decode: no host tensor per call)
        self.register_buffer(
            "class_ids_flat",
            torch.tensor([c for ids in self.task_class_ids for c in ids], dtype=torch.long),
            persistent=False,
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
        """Training targets (METHOD.md 4.6), vectorised on the boxes' device.

        gt_boxes: B tensors [M_b, 9] (ego frame); gt_labels: B tensors [M_b] int64 class indices.
        Within a task, boxes are ordered by class, then annotation order, and cut at
        ``max_objs``; slot k keeps a zero entry and mask False when box k has a size <= 0 or
        its truncated centre cell lies outside the grid.

        Same result as :meth:`get_targets_reference` with one host synchronisation instead of
        one per box: boxes are padded to [B, M] (M from the list's shapes), slots are ranks of
        a sort key, and the Gaussians of all boxes are evaluated on one window of the largest
        radius (separable, float64 like the reference kernel, zero outside each box's radius)
        and max-reduced into their class plane with ``scatter_reduce_`` (see
        :func:`_draw_gaussians`).
        """
        grid, cfg = self.grid, self.cfg
        ny, nx = grid.size_y, grid.size_x
        b = len(gt_boxes)
        device = gt_boxes[0].device if b else torch.device("cpu")
        dtype = gt_boxes[0].dtype if b else torch.float32
        k_max = cfg.max_objs
        heatmaps = [torch.zeros(b, len(t), ny, nx, dtype=dtype, device=device) for t in self.tasks]
        anno_boxes = [
            torch.zeros(b, k_max, box_coder.CODE_SIZE, dtype=dtype, device=device)
            for _ in self.tasks
        ]
        inds = [torch.zeros(b, k_max, dtype=torch.long, device=device) for _ in self.tasks]
        masks = [torch.zeros(b, k_max, dtype=torch.bool, device=device) for _ in self.tasks]
        per_sample = [g.reshape(-1, BOX_DIM) for g in gt_boxes]
        m = max((g.shape[0] for g in per_sample), default=0)
        if b == 0 or m == 0:
            return Targets(heatmaps=heatmaps, anno_boxes=anno_boxes, inds=inds, masks=masks)
        pad = torch.nn.utils.rnn.pad_sequence
        boxes = pad(per_sample, batch_first=True, padding_value=0.0)  # [B, M, 9]
        labels = pad(
            [lab.to(device=device, dtype=torch.long).reshape(-1) for lab in gt_labels],
            batch_first=True,
            padding_value=-1,
        )  # [B, M], -1 = padding
        flat_boxes = boxes.reshape(b * m, BOX_DIM)
        code, cells = box_coder.encode(flat_boxes, grid)
        l_cells = flat_boxes[:, 3] / grid.x_bound[2]
        w_cells = flat_boxes[:, 4] / grid.y_bound[2]
        valid = (l_cells > 0) & (w_cells > 0) & box_coder.cells_in_grid(cells, grid)
        radius = gaussian_radius_tensor(w_cells, l_cells, cfg.gaussian_overlap)
        radius = torch.where(valid, radius, torch.zeros_like(radius))
        radius = radius.to(torch.int64).clamp(min=cfg.min_radius)  # [B*M]
        flat_cell = (cells[:, 1] * nx + cells[:, 0]).view(b, m)
        code = code.view(b, m, box_coder.CODE_SIZE)
        valid = valid.view(b, m)
        arange_m = torch.arange(m, device=device)
        sample = torch.arange(b, device=device).view(b, 1).expand(b, m)
        big = torch.iinfo(torch.int64).max
        plane = torch.full((b, m), -1, dtype=torch.long, device=device)  # heatmap plane or -1
        plane_offset = 0
        planes_per_sample = sum(len(t) for t in self.tasks)
        draw_planes: list[Tensor] = []
        for t, class_ids in enumerate(self.task_class_ids):
            pos = torch.full((b, m), -1, dtype=torch.long, device=device)
            for j, c in enumerate(class_ids):
                pos = torch.where(labels == c, torch.full_like(pos, j), pos)
            in_task = pos >= 0
            key = torch.where(in_task, pos * m + arange_m, torch.full_like(pos, big))
            order = torch.argsort(key, dim=1)
            rank = torch.empty_like(order).scatter_(1, order, arange_m.expand(b, m))
            write = in_task & valid & (rank < k_max)
            slot = torch.where(write, sample * k_max + rank, torch.full_like(rank, b * k_max))
            slot = slot.reshape(-1)
            buf = code.new_zeros(b * k_max + 1, box_coder.CODE_SIZE)
            buf[slot] = torch.where(write[..., None], code, torch.zeros_like(code)).reshape(
                -1, box_coder.CODE_SIZE
            )
            anno_boxes[t] = buf[:-1].view(b, k_max, box_coder.CODE_SIZE)
            ibuf = flat_cell.new_zeros(b * k_max + 1)
            ibuf[slot] = torch.where(write, flat_cell, torch.zeros_like(flat_cell)).reshape(-1)
            inds[t] = ibuf[:-1].view(b, k_max)
            mbuf = write.new_zeros(b * k_max + 1)
            mbuf[slot] = write.reshape(-1)
            masks[t] = mbuf[:-1].view(b, k_max)
            # heatmap plane (sample, task, class) of every drawn box, in a [B * sum_k] stack
            this = sample * planes_per_sample + plane_offset + pos
            draw_planes.append(torch.where(write, this, torch.full_like(this, -1)))
            plane_offset += len(class_ids)
        stacked = torch.zeros(b * planes_per_sample + 1, ny * nx, dtype=dtype, device=device)
        disjoint = len({c for ids in self.task_class_ids for c in ids}) == sum(
            len(ids) for ids in self.task_class_ids
        )
        groups = [plane] if disjoint else []
        for dp in draw_planes:
            if disjoint:
                plane = torch.where(dp >= 0, dp, plane)
                groups[0] = plane
            else:
                groups.append(dp)
        centres = cells.view(b * m, 2)
        for group in groups:
            group = group.reshape(-1)
            group = torch.where(group >= 0, group, torch.full_like(group, b * planes_per_sample))
            _draw_gaussians(stacked, group, centres, radius, (ny, nx))
        stacked = stacked[:-1].view(b, planes_per_sample, ny, nx)
        offset = 0
        for t, task in enumerate(self.tasks):
            heatmaps[t] = stacked[:, offset : offset + len(task)].contiguous()
            offset += len(task)
        return Targets(heatmaps=heatmaps, anno_boxes=anno_boxes, inds=inds, masks=masks)

    # ------------------------------------------------------------------------------------
    @torch.no_grad()
    def get_targets_reference(self, gt_boxes: list[Tensor], gt_labels: list[Tensor]) -> Targets:
        """Readable reference of :meth:`get_targets` (a loop over samples, tasks and boxes; one
        host round trip per box on CUDA). Same arguments and result.

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
            start = sum(len(ids) for ids in self.task_class_ids[:t])
            class_ids = self.class_ids_flat[start : start + len(self.task_class_ids[t])]
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


#: Values per chunk of the windowed Gaussian evaluation (boxes x (2 R + 1)^2 float64 values).
_GAUSSIAN_CHUNK_VALUES = 2**22


def _draw_gaussians(
    planes: Tensor, group: Tensor, centres: Tensor, radius: Tensor, shape: tuple[int, int]
) -> None:
    """Max-draw the Gaussian of every box into its plane, in place (vectorised ``draw_gaussian``).

    planes [G, Y*X] (the last row is a dummy); group [M] int64 row of ``planes`` per box (the
    dummy row for boxes that draw nothing); centres [M, 2] int64 cells (x, y) inside the grid;
    radius [M] int64. The kernel of radius r is ``exp(-(dx^2 + dy^2) / (2 sigma^2))``,
    sigma = (2 r + 1) / 6, on ``|dx|, |dy| <= r``, values below float64 eps set to 0 (as
    :func:`gaussian_2d`), evaluated in float64 as the product of its two separable factors and
    rounded to the planes' dtype. All boxes share one (2 R + 1)^2 window, R the largest radius:
    reading R is the only host synchronisation.
    """
    if group.numel() == 0:
        return
    ny, nx = shape
    device = planes.device
    r_max = int(radius.max())  # the one host read (window size)
    offs = torch.arange(-r_max, r_max + 1, device=device)  # [W]
    offs_f = offs.to(torch.float64)
    eps = torch.finfo(torch.float64).eps
    win = offs.numel()
    dummy = (planes.shape[0] - 1) * ny * nx
    flat_planes = planes.view(-1)
    chunk = max(1, _GAUSSIAN_CHUNK_VALUES // (win * win))
    for start in range(0, group.shape[0], chunk):
        sl = slice(start, start + chunk)
        r = radius[sl][:, None]  # [m, 1]
        two_s2 = 2.0 * ((2.0 * r.to(torch.float64) + 1.0) / 6.0) ** 2
        xs = centres[sl, 0][:, None] + offs  # [m, W]
        ys = centres[sl, 1][:, None] + offs
        in_x = (offs.abs() <= r) & (xs >= 0) & (xs < nx)
        in_y = (offs.abs() <= r) & (ys >= 0) & (ys < ny)
        sq = offs_f * offs_f
        gx = torch.where(in_x, torch.exp(-sq / two_s2), torch.zeros_like(two_s2))
        gy = torch.where(in_y, torch.exp(-sq / two_s2), torch.zeros_like(two_s2))
        g = gy[:, :, None] * gx[:, None, :]  # [m, W, W] (y, x)
        g = torch.where(g < eps, torch.zeros_like(g), g).to(planes.dtype)
        index = group[sl][:, None, None] * (ny * nx) + ys[:, :, None] * nx + xs[:, None, :]
        inside = in_y[:, :, None] & in_x[:, None, :]
        index = torch.where(inside, index, torch.full_like(index, dummy))
        flat_planes.scatter_reduce_(0, index.reshape(-1), g.reshape(-1), "amax")
