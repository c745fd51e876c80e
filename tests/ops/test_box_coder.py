"""CenterPoint box codes: hand-worked encoding, encode -> dense maps -> decode round trip,
top-k, score threshold and range filter (METHOD.md 4.6, 4.7)."""

from __future__ import annotations

import math

import pytest
import torch

from labeldistill.config import GridConfig
from labeldistill.ops.box_coder import (
    DecodeParams,
    cells_in_grid,
    decode,
    encode,
    topk_cells,
)

GRID = GridConfig()  # 128 x 128 cells of 0.8 m from -51.2
# Non-square, non-symmetric grid: X = 40 cells of 0.5 m from -10, Y = 30 cells of 0.4 m from -4.
ODD_GRID = GridConfig(x_bound=(-10.0, 10.0, 0.5), y_bound=(-4.0, 8.0, 0.4))


def test_encode_hand_case() -> None:
    boxes = torch.tensor(
        [
            [1.0, -2.0, 0.5, 4.0, 2.0, 1.5, 0.3, 1.0, -0.5],
            [-51.6, 51.0, -1.0, 1.0, 1.0, 1.0, -2.0, 0.0, 0.0],  # cx = -0.5 truncates to 0
            [60.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0],  # outside the grid
        ],
        dtype=torch.float64,
    )
    code, cells = encode(boxes, GRID)
    # cx = 52.2 / 0.8 = 65.25, cy = 49.2 / 0.8 = 61.5
    assert cells[0].tolist() == [65, 61]
    expected = [
        0.25,
        0.5,
        0.5,
        math.log(4),
        math.log(2),
        math.log(1.5),
        math.sin(0.3),
        math.cos(0.3),
        1.0,
        -0.5,
    ]
    torch.testing.assert_close(code[0], torch.tensor(expected, dtype=torch.float64))
    # Truncation toward zero: cell 0 with offset -0.5; cy = 102.2 / 0.8 = 127.75.
    assert cells[1].tolist() == [0, 127]
    assert code[1, 0].item() == pytest.approx(-0.5)
    assert code[1, 1].item() == pytest.approx(0.75)
    assert cells[2].tolist() == [139, 64]
    assert cells_in_grid(cells, GRID).tolist() == [True, True, False]
    assert code.dtype == torch.float64 and cells.dtype == torch.int64


def _random_boxes(
    n: int, grid: GridConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """n boxes on distinct cells (centres strictly inside the grid) and their flat cells."""
    nx, ny = grid.size_x, grid.size_y
    flat = torch.randperm(nx * ny, generator=gen)[:n]
    xs, ys = flat % nx, flat // nx
    off = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    x = (xs + off[:, 0]) * grid.x_bound[2] + grid.x_bound[0]
    y = (ys + off[:, 1]) * grid.y_bound[2] + grid.y_bound[0]
    z = torch.rand(n, generator=gen, dtype=torch.float64) * 6 - 4
    lwh = torch.rand(n, 3, generator=gen, dtype=torch.float64) * 10 + 0.2
    yaw = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * (math.pi - 1e-6)
    vel = torch.randn(n, 2, generator=gen, dtype=torch.float64) * 5
    boxes = torch.cat([x[:, None], y[:, None], z[:, None], lwh, yaw[:, None], vel], dim=1)
    return boxes, flat


@pytest.mark.parametrize("grid", [GRID, ODD_GRID], ids=["128x128", "40x30"])
def test_encode_decode_round_trip(grid: GridConfig) -> None:
    gen = torch.Generator().manual_seed(3)
    n, n_cls, b = 60, 3, 2
    nx, ny = grid.size_x, grid.size_y
    heat = torch.zeros(b, n_cls, ny, nx, dtype=torch.float64)
    code_maps = torch.zeros(b, 10, ny, nx, dtype=torch.float64)
    all_boxes, all_labels = [], []
    for i in range(b):
        boxes, flat = _random_boxes(n, grid, gen)
        labels = torch.randint(0, n_cls, (n,), generator=gen)
        code, cells = encode(boxes, grid)
        assert torch.equal(cells[:, 1] * nx + cells[:, 0], flat)
        heat[i, labels, cells[:, 1], cells[:, 0]] = 1.0
        code_maps[i, :, cells[:, 1], cells[:, 0]] = code.T
        all_boxes.append(boxes)
        all_labels.append(labels)
    dets = decode(
        heat,
        code_maps,
        grid,
        DecodeParams(max_num=500, score_threshold=0.1, post_center_range=None),
    )
    for i in range(b):
        d = dets[i]
        assert d.boxes.shape == (n, 9)
        order_in = torch.argsort(all_boxes[i][:, 0])
        order_out = torch.argsort(d.boxes[:, 0])
        torch.testing.assert_close(d.boxes[order_out], all_boxes[i][order_in], rtol=0, atol=1e-5)
        assert torch.equal(d.labels[order_out], all_labels[i][order_in])
        assert torch.all(d.scores == 1.0)


def test_round_trip_float32() -> None:
    gen = torch.Generator().manual_seed(5)
    boxes, _ = _random_boxes(40, GRID, gen)
    boxes = boxes.float()
    code, cells = encode(boxes, GRID)
    heat = torch.zeros(1, 1, 128, 128)
    maps = torch.zeros(1, 10, 128, 128)
    heat[0, 0, cells[:, 1], cells[:, 0]] = 0.5
    maps[0, :, cells[:, 1], cells[:, 0]] = code.T
    d = decode(heat, maps, GRID, DecodeParams())[0]
    torch.testing.assert_close(
        d.boxes[torch.argsort(d.boxes[:, 0])], boxes[torch.argsort(boxes[:, 0])], rtol=0, atol=1e-4
    )


def test_topk_per_class_then_per_task() -> None:
    # 2 classes on a 2 x 3 grid (6 cells < max_num: K per class = 6, then K = 4 overall).
    heat = torch.zeros(1, 2, 2, 3)
    heat[0, 0, 1, 2] = 0.9  # class 0, cell 5
    heat[0, 1, 0, 1] = 0.8  # class 1, cell 1
    heat[0, 0, 0, 0] = 0.3  # class 0, cell 0
    heat[0, 1, 1, 0] = 0.2  # class 1, cell 3
    heat[0, 1, 1, 2] = 0.1  # class 1, cell 5 (same cell as the best, another class)
    scores, index = topk_cells(heat, max_num=4)
    torch.testing.assert_close(scores, torch.tensor([[0.9, 0.8, 0.3, 0.2]]))
    assert index[0].tolist() == [[0, 5], [1, 1], [0, 0], [1, 3]]
    scores, index = topk_cells(heat, max_num=500)
    assert scores.shape == (1, 12)
    assert index[0, 4].tolist() == [1, 5]


def test_decode_threshold_and_range() -> None:
    grid = ODD_GRID
    heat = torch.zeros(1, 1, grid.size_y, grid.size_x, dtype=torch.float64)
    maps = torch.zeros(1, 10, grid.size_y, grid.size_x, dtype=torch.float64)
    maps[:, 7] = 1.0  # cos = 1 -> yaw 0
    heat[0, 0, 3, 4] = 0.1  # not kept: the threshold is strict
    heat[0, 0, 5, 6] = 0.11  # kept
    heat[0, 0, 7, 8] = 0.9
    maps[0, 2, 7, 8] = 10.5  # z outside post_center_range -> dropped
    heat[0, 0, 9, 10] = 0.5
    maps[0, 2, 9, 10] = 10.0  # z on the (inclusive) range edge -> kept
    params = DecodeParams(
        max_num=500, score_threshold=0.1, post_center_range=(-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    )
    d = decode(heat, maps, grid, params)[0]
    torch.testing.assert_close(d.scores, torch.tensor([0.5, 0.11], dtype=torch.float64))
    # cell (x 10, y 9): x = 10 * 0.5 - 10 = -5, y = 9 * 0.4 - 4 = -0.4; sizes exp(0) = 1.
    torch.testing.assert_close(
        d.boxes[0],
        torch.tensor([-5.0, -0.4, 10.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64),
    )
