"""Circle NMS (METHOD.md 4.7 step 4): greedy by score, suppress any box whose squared centre
distance to a kept box is <= ``thresh_sq``; keep at most ``post_max_size``.

Ties in score keep the original order (stable sort). Two implementations with identical
output: :func:`circle_nms_reference` (the greedy loop, readable) and :func:`circle_nms`
(vectorised fixed-point iteration, the default).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _order_and_dist(centers: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    order = torch.sort(scores, descending=True, stable=True).indices
    c = centers[order]
    diff = c[:, None, :] - c[None, :, :]
    return order, (diff * diff).sum(dim=2)


def circle_nms_reference(centers: Tensor, scores: Tensor, thresh_sq: float, post_max_size: int) -> Tensor:
    """Greedy circle NMS, one box at a time.

    centers: [M, 2] (x, y); scores: [M]. Returns kept indices into the inputs [<= post_max_size]
    int64, in descending score order.
    """
    m = int(centers.shape[0])
    order_t, dist = _order_and_dist(centers, scores)  # dist in score order
    order = order_t.tolist()
    near = (dist <= thresh_sq).tolist()
    suppressed = [False] * m  # by position in score order
    keep: list[int] = []
    for a in range(m):
        if suppressed[a]:
            continue
        keep.append(order[a])
        for b in range(a + 1, m):
            if not suppressed[b] and near[a][b]:
                suppressed[b] = True
    return torch.tensor(keep[:post_max_size], dtype=torch.long, device=centers.device)


def circle_nms(centers: Tensor, scores: Tensor, thresh_sq: float, post_max_size: int) -> Tensor:
    """Vectorised circle NMS with the output of :func:`circle_nms_reference`.

    In score order, box i is kept iff no kept box before it lies within the radius. This
    recursion has a unique solution; iterating ``keep = ~any_{j<i}(near[j, i] & keep[j])``
    from "all kept" fixes one more leading entry per step, so it reaches that solution in at
    most M steps (in practice a handful) and stops when nothing changes.

    centers: [M, 2]; scores: [M] -> kept indices [<= post_max_size] int64, by descending score.
    """
    m = int(centers.shape[0])
    if m == 0:
        return torch.zeros(0, dtype=torch.long, device=centers.device)
    order, dist = _order_and_dist(centers, scores)
    near = torch.triu(dist <= thresh_sq, diagonal=1).to(torch.float32)  # near[j, i], j < i
    keep = torch.ones(m, dtype=torch.bool, device=centers.device)
    for _ in range(m + 1):
        new_keep = (keep.to(torch.float32) @ near) == 0
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return order[keep][:post_max_size]
