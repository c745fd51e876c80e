"""CenterPoint head costs on CPU at the paper's shapes (128 x 128 grid, 6 tasks, B = 4).

    .venv/bin/python benchmarks/bench_center_head.py [--repeats 5] [--boxes 500] [--threads 1]

Measures, median of ``--repeats`` runs:

* circle NMS on 500 boxes per call (one task of one sample, the paper's radii): the readable
  reference loop vs the default fast path (ratio reference / fast);
* ``CenterHead.get_targets`` for B samples of ``--boxes`` boxes each (random classes, sizes and
  positions inside the grid), ``CenterHead.decode`` of random head outputs (every task full:
  500 candidates above the threshold, NMS on all of them), both against the head forward
  (student head, 256 input channels) in the same run as the reference.

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from labeldistill.config import GridConfig, HeadConfig
from labeldistill.models.center_head import CenterHead
from labeldistill.ops.nms import circle_nms, circle_nms_reference


def _median(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _random_boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    boxes = torch.zeros(n, 9)
    boxes[:, :2] = torch.rand(n, 2, generator=gen) * 100 - 50
    boxes[:, 2] = torch.rand(n, generator=gen) * 2 - 1
    boxes[:, 3:6] = torch.rand(n, 3, generator=gen) * 8 + 0.3
    boxes[:, 6] = torch.rand(n, generator=gen) * 6 - 3
    boxes[:, 7:] = torch.randn(n, 2, generator=gen)
    return boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--boxes", type=int, default=500)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows: list[tuple[str, float, str]] = []

    cfg = HeadConfig()
    for radius in (0.175, 4.0, 12.0):
        centers = torch.rand(500, 2, generator=gen) * 100 - 50
        scores = torch.rand(500, generator=gen)
        t_ref = _median(
            lambda c=centers, s=scores, r=radius: circle_nms_reference(c, s, r, cfg.post_max_size),
            args.repeats,
        )
        t_fast = _median(
            lambda c=centers, s=scores, r=radius: circle_nms(c, s, r, cfg.post_max_size),
            args.repeats,
        )
        rows.append((f"circle NMS reference, 500 boxes, r^2 {radius}", t_ref, "1.00"))
        rows.append(
            (f"circle NMS fast, 500 boxes, r^2 {radius}", t_fast, f"{t_ref / t_fast:.1f}x faster")
        )

    head = CenterHead(256, GridConfig(), cfg).eval()
    feat = torch.randn(args.batch, 256, 128, 128)
    with torch.no_grad():
        t_fwd = _median(lambda: head(feat), args.repeats)
        out = head(feat)
    boxes = [_random_boxes(args.boxes, gen) for _ in range(args.batch)]
    labels = [torch.randint(0, 10, (args.boxes,), generator=gen) for _ in range(args.batch)]
    t_tg = _median(lambda: head.get_targets(boxes, labels), args.repeats)
    t_dec = _median(lambda: head.decode(out), args.repeats)
    n = sum(len(d.scores) for d in head.decode(out))
    rows.append((f"head forward, B={args.batch} (reference)", t_fwd, "1.00"))
    rows.append(
        (
            f"get_targets, B={args.batch} x {args.boxes} boxes",
            t_tg,
            f"{t_tg / t_fwd:.2f} of forward",
        )
    )
    rows.append(
        (f"decode, B={args.batch}, {n} detections out", t_dec, f"{t_dec / t_fwd:.2f} of forward")
    )

    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, median of {args.repeats}\n"
    )
    print("| what | ms | ratio |")
    print("|---|---:|---:|")
    for name, t, ratio in rows:
        print(f"| {name} | {t * 1000:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
