"""Label encoder ("label teacher", METHOD.md 6): GT boxes rasterised onto the BEV grid and
embedded into the LiDAR teacher's SECOND feature space.

Two rasterisation modes (``LabelEncoderConfig.rasterize``, see docs/deviations.md):

* ``faithful`` reproduces the published footprint rule (quirks 10, 11): the footprint is shrunk
  to half its length and width, corners are truncated to integer cells, and every lattice point
  inside or on the boundary of the integer quadrilateral is painted (our deterministic stand-in
  for scikit-image's boundary-inclusive ``polygon``); a degenerate polygon paints at least the
  cell of its first corner. As scikit-image's ``polygon`` (which never returns a negative
  index), cells with a negative row or column are not painted, and the remaining indices are
  clipped to the high edge: objects beyond the +x / +y edges paint column / row ``X - 1`` /
  ``Y - 1``, objects beyond the -x / -y edges paint nothing and objects partly outside there
  are cropped (METHOD.md 6.1 step 3).
* ``corrected`` paints the full footprint: a cell is painted when its centre lies inside the
  exact (continuous) rotated rectangle, at least the cell containing the box centre; objects whose
  centre is outside the grid are skipped, nothing is clipped onto the border.

Order: task by task, class by class within a task, annotation order within a class, at most
``max_objs`` boxes per task; later boxes overwrite earlier ones (as the published code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from labeldistill.config import GridConfig, LabelEncoderConfig
from labeldistill.models.common import BasicBlock
from labeldistill.structures import CLASSES, NUM_CLASSES, TASKS, LabelMaps


def _task_order(labels: Tensor, max_objs: int) -> list[int]:
    """Indices of boxes in drawing order: task by task, class by class, annotation order."""
    order: list[int] = []
    labels_list = labels.tolist()
    for task in TASKS:
        taken = 0
        for name in task:
            cls = CLASSES.index(name)
            for i, lab in enumerate(labels_list):
                if lab == cls and taken < max_objs:
                    order.append(i)
                    taken += 1
    return order


def _points_in_quad(px: Tensor, py: Tensor, quad: Tensor) -> Tensor:
    """Boundary-inclusive test of lattice points against a convex quadrilateral.

    px, py: [K] float; quad: [4, 2] corners in order around the polygon -> [K] bool.
    """
    signs = []
    for k in range(4):
        ax, ay = quad[k]
        bx, by = quad[(k + 1) % 4]
        signs.append((bx - ax) * (py - ay) - (by - ay) * (px - ax))
    s = torch.stack(signs)  # [4, K]
    eps = 1e-9
    return (s >= -eps).all(0) | (s <= eps).all(0)


def _footprint_cells(
    cx: float, cy: float, half_w: float, half_l: float, yaw: float, integer_corners: bool
) -> tuple[Tensor, Tensor]:
    """Cells (rows, cols) covered by a rotated rectangle in continuous cell coordinates.

    ``half_w`` is across the heading, ``half_l`` along it. Faithful mode (``integer_corners``)
    tests integer lattice points against truncated corners; corrected mode tests cell centres
    against the exact rectangle.
    """
    s, c = math.sin(yaw), math.cos(yaw)
    across = (s, -c)  # local first axis (METHOD.md 6.1)
    along = (c, s)
    corners = []
    for sa, sb in ((-1, -1), (-1, 1), (1, 1), (1, -1)):
        corners.append(
            (
                cx + sa * half_w * across[0] + sb * half_l * along[0],
                cy + sa * half_w * across[1] + sb * half_l * along[1],
            )
        )
    quad = torch.tensor(corners, dtype=torch.float64)
    if integer_corners:
        quad = torch.trunc(quad)
        offset = 0.0
    else:
        offset = 0.5
    x0, x1 = math.floor(quad[:, 0].min().item()), math.ceil(quad[:, 0].max().item())
    y0, y1 = math.floor(quad[:, 1].min().item()), math.ceil(quad[:, 1].max().item())
    ys, xs = torch.meshgrid(
        torch.arange(y0, y1 + 1, dtype=torch.float64),
        torch.arange(x0, x1 + 1, dtype=torch.float64),
        indexing="ij",
    )
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    inside = _points_in_quad(xs + offset, ys + offset, quad)
    rows, cols = ys[inside].long(), xs[inside].long()
    if rows.numel() == 0:
        if integer_corners:
            rows, cols = quad[:1, 1].long(), quad[:1, 0].long()
        else:
            rows = torch.tensor([math.floor(cy)], dtype=torch.long)
            cols = torch.tensor([math.floor(cx)], dtype=torch.long)
    return rows, cols


def rasterize_labels(
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    grid: GridConfig,
    mode: str = "faithful",
    max_objs: int = 500,
) -> LabelMaps:
    """Rasterise GT boxes into the label-encoder inputs (METHOD.md 6.1).

    gt_boxes: per sample [M, 9] (ego frame, after BEV augmentation); gt_labels: per sample [M].
    Returns LabelMaps with box [B, Y, X, 9], label [B, Y, X, 10], mask [B, Y, X] (uint8),
    on the device of the boxes.
    """
    if mode not in ("faithful", "corrected"):
        raise ValueError(f"rasterize mode must be 'faithful' or 'corrected', got {mode!r}")
    Y, X = grid.size_y, grid.size_x
    x_min, y_min = grid.x_bound[0], grid.y_bound[0]
    dx, dy = grid.x_bound[2], grid.y_bound[2]
    B = len(gt_boxes)
    device = gt_boxes[0].device if B else torch.device("cpu")
    box_map = torch.zeros(B, Y, X, 9)
    label_map = torch.zeros(B, Y, X, NUM_CLASSES)
    mask = torch.zeros(B, Y, X, dtype=torch.uint8)
    for b, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
        boxes_cpu = boxes.detach().float().cpu()
        labels_cpu = labels.detach().long().cpu()
        for i in _task_order(labels_cpu, max_objs):
            box = boxes_cpu[i]
            l_c, w_c = box[3].item() / dx, box[4].item() / dy
            if not (l_c > 0 and w_c > 0):
                continue
            cx = (box[0].item() - x_min) / dx
            cy = (box[1].item() - y_min) / dy
            yaw = box[6].item()
            if mode == "faithful":
                rows, cols = _footprint_cells(cx, cy, w_c / 4, l_c / 4, yaw, integer_corners=True)
                # scikit-image drops negative indices; the published clip acts on the high side.
                keep = (rows >= 0) & (cols >= 0)
                rows, cols = rows[keep].clamp(max=Y - 1), cols[keep].clamp(max=X - 1)
            else:
                if not (0 <= cx < X and 0 <= cy < Y):
                    continue
                rows, cols = _footprint_cells(cx, cy, w_c / 2, l_c / 2, yaw, integer_corners=False)
                keep = (rows >= 0) & (rows < Y) & (cols >= 0) & (cols < X)
                rows, cols = rows[keep], cols[keep]
            cls = int(labels_cpu[i])
            mask[b, rows, cols] = 1
            label_map[b, rows, cols] = 0.0
            label_map[b, rows, cols, cls] = 1.0
            box_map[b, rows, cols] = box[:9]
    return LabelMaps(box=box_map.to(device), label=label_map.to(device), mask=mask.to(device))


class _MLP(nn.Module):
    """Linear - ReLU - Linear (names fc1, fc2 as the published ``Mlp``)."""

    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LabelEncoder(nn.Module):
    """``LabelBackbone`` of METHOD.md 6.2: label maps -> two SECOND-shaped feature levels.

    forward(box [B, Y, X, 9], label [B, Y, X, 10]) -> (level 0 [B, out0, Y, X],
    level 1 [B, out1, Y/2, X/2]). ``bev_mask`` is not an input (quirk 12: the original ignores it).
    """

    def __init__(self, cfg: LabelEncoderConfig, grid: GridConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = grid
        hidden = cfg.hidden_channels
        Y, X = grid.size_y, grid.size_x
        self.mlp_box = _MLP(9, hidden, hidden)
        self.mlp_label = _MLP(NUM_CLASSES, hidden, hidden)
        self.mlp2 = _MLP(hidden, hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.conv1 = BasicBlock(hidden)
        blocks = []
        for out_c, stride in zip(cfg.out_channels, cfg.strides):
            h, w = Y // stride, X // stride
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(hidden, out_c, 3, stride, 1, padding_mode="replicate"),
                    nn.LayerNorm([out_c, h, w]),
                    nn.ReLU(inplace=True),
                )
            )
        self.conv_blocks = nn.ModuleList(blocks)
        self.out_channels = tuple(cfg.out_channels)

    def label_maps(
        self, gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor], max_objs: int
    ) -> LabelMaps:
        """The inputs of this encoder from (bda-augmented) GT: :func:`rasterize_labels` on its
        grid with its ``rasterize`` mode; box [B, Y, X, 9], label [B, Y, X, 10], mask [B, Y, X]."""
        return rasterize_labels(gt_boxes, gt_labels, self.grid, self.cfg.rasterize, max_objs)

    def forward(self, box: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        B, Y, X, _ = box.shape
        tokens = self.mlp_box(box.reshape(B, Y * X, -1)) + self.mlp_label(
            label.reshape(B, Y * X, -1)
        )  # [B, Y*X, hidden]
        tokens = self.ln2(self.mlp2(tokens))
        x = tokens.transpose(1, 2).reshape(B, -1, Y, X)  # [B, hidden, Y, X]
        x = self.conv1(x)
        level0, level1 = (block(x) for block in self.conv_blocks)
        return level0, level1
