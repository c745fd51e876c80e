"""Circle NMS (METHOD.md 4.7 step 4): greedy by score, suppress any box whose squared centre
distance to a kept box is <= ``thresh_sq``; keep at most ``post_max_size``.

Ties in score keep the original order (stable sort). Two implementations with identical
output: :func:`circle_nms_reference` (the greedy loop, readable) and :func:`circle_nms`
(bit-set greedy pass; the default).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _order_and_dist(centers: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    order = torch.sort(scores, descending=True, stable=True).indices
    x = centers[order, 0]
    y = centers[order, 1]
    dx = x[:, None] - x[None, :]
    dy = y[:, None] - y[None, :]
    return order, dx * dx + dy * dy


def circle_nms_reference(
    centers: Tensor, scores: Tensor, thresh_sq: float, post_max_size: int
) -> Tensor:
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
    """Fast circle NMS with the output of :func:`circle_nms_reference`.

    The "within the radius" matrix of all pairs (the reference's values) is computed at once and
    packed into one bit-row per box (a single device-to-host copy of M*M/8 bytes); the greedy
    pass then runs on Python integers as bit sets: take the lowest alive position (highest
    score), clear its row. At most ``post_max_size`` steps (the greedy list cut after
    ``post_max_size`` boxes does not depend on later boxes).

    centers: [M, 2]; scores: [M] -> kept indices [<= post_max_size] int64, by descending score.
    """
    m = int(centers.shape[0])
    if m == 0 or post_max_size <= 0:
        return torch.zeros(0, dtype=torch.long, device=centers.device)
    order, dist = _order_and_dist(centers, scores)
    nbytes = (m + 7) // 8
    near = torch.zeros(m, nbytes * 8, dtype=torch.uint8, device=centers.device)
    near[:, :m] = dist <= thresh_sq  # NaN distances are "not near", as in the reference
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=centers.device)
    packed = (near.view(m, nbytes, 8) * weights).sum(dim=2, dtype=torch.uint8)  # bit k of byte j
    raw = packed.cpu().numpy().tobytes()  # row a = bytes [a*nbytes, (a+1)*nbytes), little endian
    alive = (1 << m) - 1  # bit a = score position a
    keep: list[int] = []
    while alive and len(keep) < post_max_size:
        a = (alive & -alive).bit_length() - 1
        keep.append(a)
        alive &= ~int.from_bytes(raw[a * nbytes : (a + 1) * nbytes], "little")
        alive &= ~(1 << a)
    return order[torch.tensor(keep, dtype=torch.long, device=centers.device)]
