"""CenterPoint box codes on the BEV grid (METHOD.md 4.6 targets, 4.7 decoding).

The 10-D code of a box is ``(dx, dy, z, ln l, ln w, ln h, sin yaw, cos yaw, vx, vy)`` where
``(dx, dy)`` is the offset of the centre from its integer cell ``(xi, yi)`` (truncation toward
zero of the continuous cell coordinate, as the published code), in cells. The dense head maps
carry the same 10 channels in this order (``TaskOutput.box_code()``).

:func:`encode` maps boxes to codes and cells; :func:`decode` maps dense maps (heatmap
probabilities + codes) of one task back to boxes. ``decode(encode(b))`` is the identity on
boxes whose centre lies on the grid (yaw wrapped to (-pi, pi]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from labeldistill.config import GridConfig
from labeldistill.structures import Detections

CODE_SIZE = 10


def encode(boxes: Tensor, grid: GridConfig) -> tuple[Tensor, Tensor]:
    """Boxes -> CenterPoint codes and integer cells.

    boxes: [M, 9] ``(x, y, z, l, w, h, yaw, vx, vy)`` ego frame.
    Returns ``code`` [M, 10] (dtype of ``boxes``) and ``cells`` [M, 2] int64 ``(xi, yi)``;
    cells may lie outside ``[0, X) x [0, Y)`` (check with :func:`cells_in_grid`); sizes <= 0
    give non-finite log sizes (the targets skip such boxes).
    """
    cx = (boxes[:, 0] - grid.x_bound[0]) / grid.x_bound[2]
    cy = (boxes[:, 1] - grid.y_bound[0]) / grid.y_bound[2]
    xi = cx.to(torch.int64)  # truncation toward zero, as the published code
    yi = cy.to(torch.int64)
    code = torch.stack(
        [
            cx - xi.to(boxes.dtype),
            cy - yi.to(boxes.dtype),
            boxes[:, 2],
            boxes[:, 3].log(),
            boxes[:, 4].log(),
            boxes[:, 5].log(),
            boxes[:, 6].sin(),
            boxes[:, 6].cos(),
            boxes[:, 7],
            boxes[:, 8],
        ],
        dim=1,
    )
    return code, torch.stack([xi, yi], dim=1)


def cells_in_grid(cells: Tensor, grid: GridConfig) -> Tensor:
    """cells: [M, 2] int64 (xi, yi) -> [M] bool, True inside ``[0, X) x [0, Y)``."""
    return (
        (cells[:, 0] >= 0)
        & (cells[:, 0] < grid.size_x)
        & (cells[:, 1] >= 0)
        & (cells[:, 1] < grid.size_y)
    )


def code_to_boxes(code: Tensor, xs: Tensor, ys: Tensor, grid: GridConfig) -> Tensor:
    """Codes at integer cells -> boxes.

    code: [..., 10] with log sizes; xs, ys: [...] cell columns / rows (any numeric dtype).
    Returns [..., 9] ``(x, y, z, l, w, h, yaw, vx, vy)`` with ``yaw = atan2(sin, cos)``.
    """
    x = (xs.to(code.dtype) + code[..., 0]) * grid.x_bound[2] + grid.x_bound[0]
    y = (ys.to(code.dtype) + code[..., 1]) * grid.y_bound[2] + grid.y_bound[0]
    yaw = torch.atan2(code[..., 6], code[..., 7])
    return torch.cat(
        [
            x[..., None],
            y[..., None],
            code[..., 2:3],
            code[..., 3:6].exp(),
            yaw[..., None],
            code[..., 8:10],
        ],
        dim=-1,
    )


@dataclass(frozen=True)
class DecodeParams:
    """Decoding settings (METHOD.md 4.7): top-``max_num``, score threshold (strict ``>``) and the
    ``post_center_range`` (x_min, y_min, z_min, x_max, y_max, z_max, inclusive)."""

    max_num: int = 500
    score_threshold: float = 0.1
    post_center_range: tuple[float, ...] | None = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)


def topk_cells(heatmap: Tensor, max_num: int) -> tuple[Tensor, Tensor]:
    """Top-k per class over the cells, then top-k over all classes (METHOD.md 4.7 step 1).

    heatmap: [B, k, Y, X] scores. With ``K_c = min(max_num, Y*X)`` per class and
    ``K = min(max_num, k*K_c)``, returns ``scores`` [B, K] (descending) and ``index`` [B, K, 2]
    int64 holding (class, flat cell index ``y * X + x``).
    """
    b, n_cls, ny, nx = heatmap.shape
    k_cls = min(max_num, ny * nx)
    cls_scores, cls_inds = torch.topk(heatmap.reshape(b, n_cls, ny * nx), k_cls, dim=2)
    k_all = min(max_num, n_cls * k_cls)
    scores, rank = torch.topk(cls_scores.reshape(b, n_cls * k_cls), k_all, dim=1)
    inds = torch.gather(cls_inds.reshape(b, n_cls * k_cls), 1, rank)
    classes = torch.div(rank, k_cls, rounding_mode="floor")
    return scores, torch.stack([classes, inds], dim=2)


def decode(
    heatmap: Tensor, code: Tensor, grid: GridConfig, params: DecodeParams
) -> list[Detections]:
    """Dense maps of one task -> per-sample detections (before NMS), METHOD.md 4.7 steps 1-3.

    heatmap: [B, k, Y, X] class probabilities (after sigmoid).
    code:    [B, 10, Y, X] raw regression maps (reg, height, log dims, sin, cos, vel).
    Returns B :class:`Detections` with boxes [M, 9], scores [M] (descending) and labels [M]
    (class index within the task), keeping scores > threshold and centres in the range.
    """
    b = heatmap.shape[0]
    nx = heatmap.shape[3]
    scores, index = topk_cells(heatmap, params.max_num)
    classes, inds = index[..., 0], index[..., 1]
    feats = gather_cells(code, inds)  # [B, K, 10]
    ys = torch.div(inds, nx, rounding_mode="floor")
    xs = inds % nx
    boxes = code_to_boxes(feats, xs, ys, grid)  # [B, K, 9]
    keep = scores > params.score_threshold
    if params.post_center_range is not None:
        rng = boxes.new_tensor(params.post_center_range)
        keep &= (boxes[..., :3] >= rng[:3]).all(dim=2) & (boxes[..., :3] <= rng[3:]).all(dim=2)
    return [
        Detections(boxes[i][keep[i]], scores[i][keep[i]], classes[i][keep[i]]) for i in range(b)
    ]


def gather_cells(maps: Tensor, inds: Tensor) -> Tensor:
    """maps: [B, C, Y, X], inds: [B, K] flat cell indices -> [B, K, C]."""
    b, c = maps.shape[:2]
    flat = maps.reshape(b, c, -1)
    return torch.gather(flat, 2, inds[:, None, :].expand(b, c, inds.shape[1])).transpose(1, 2)
