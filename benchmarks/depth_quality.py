"""How well the camera students estimate depth (issue 10: the students place boxes about 1 m
off where the LiDAR teacher, on the same BEV grid, is within 0.45 m).

For trained student checkpoints of the accuracy benchmark (EMA weights; baseline or any
LabelDistill variant), over the val split without augmentation: the key-frame depth
distribution of every image-feature cell that has a LiDAR target (the depth loss's own
targets: min-pooled LiDAR depth at stride 16, METHOD.md 8.2) against that target:

* top-1 bin accuracy, and within +-1 bin;
* mean absolute error of the expected depth sum_k p_k c_k (c_k: bin centres), in metres;
* the same by target range (the distance bands of the accuracy table, ``DISTANCE_BANDS``);
* a depth-blind reference: the top-1 rate of always predicting the most frequent bin of the
  val targets themselves (an upper bound on what a net that ignores the image scores).

    R=benchmarks/_work/accuracy/bench-data0-sps12/seed0/runs
    .venv/bin/python benchmarks/depth_quality.py \\
        --ckpt $R/bevdepth_tiny/checkpoints/last.ckpt \\
        --ckpt $R/labeldistill_tiny/checkpoints/last.ckpt

Writes ``<set dir>/depth_quality.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from labeldistill.checkpoint.weights import load_weights
from labeldistill.config import load_config
from labeldistill.evaluation.nuscenes_eval import DISTANCE_BANDS
from labeldistill.models.depth_loss import NO_POINT, downsample_depth
from labeldistill.training.datamodule import StageDataModule
from labeldistill.training.stage_module import StageModule


@dataclass
class DepthStats:
    """Running sums over foreground cells: ``n`` cells, top-1 hits, +-1-bin hits, |error| sum;
    per range the same four numbers; ``hist`` counts of the target bins."""

    num_bins: int
    n: int = 0
    top1: int = 0
    near: int = 0
    abs_err: float = 0.0
    by_range: list[list[float]] = field(default_factory=list)
    hist: Tensor | None = None

    def __post_init__(self) -> None:
        self.by_range = [[0, 0, 0, 0.0] for _ in DISTANCE_BANDS]
        self.hist = torch.zeros(self.num_bins, dtype=torch.long)

    def add(self, probs: Tensor, target_m: Tensor, d_bound: tuple[float, float, float]) -> None:
        """probs [M, D] depth distributions of M foreground cells, target_m [M] metres."""
        d_min, _, step = d_bound
        centres = d_min + step * (torch.arange(self.num_bins, dtype=torch.float32) + 0.5)
        target_bin = ((target_m - d_min) / step).floor().long()
        pred_bin = probs.argmax(dim=1)
        expected = probs @ centres
        err = (expected - target_m).abs()
        hit = pred_bin == target_bin
        near = (pred_bin - target_bin).abs() <= 1
        self.n += int(target_m.numel())
        self.top1 += int(hit.sum())
        self.near += int(near.sum())
        self.abs_err += float(err.sum())
        for row, (_, lo, hi) in zip(self.by_range, DISTANCE_BANDS, strict=True):
            m = (target_m >= lo) & (target_m < hi)
            row[0] += int(m.sum())
            row[1] += int(hit[m].sum())
            row[2] += int(near[m].sum())
            row[3] += float(err[m].sum())
        assert self.hist is not None
        self.hist += torch.bincount(target_bin, minlength=self.num_bins)

    def summary(self) -> dict[str, object]:
        def rates(n: float, top1: float, near: float, err: float) -> dict[str, float]:
            d = max(n, 1)  # an empty range reports zeros over 0 cells
            return {"cells": n, "top1": top1 / d, "within_1_bin": near / d, "mae_m": err / d}

        out: dict[str, object] = {"all": rates(self.n, self.top1, self.near, self.abs_err)}
        for (name, _, _), row in zip(DISTANCE_BANDS, self.by_range, strict=True):
            out[name] = rates(*row)
        return out


def foreground(
    probs: Tensor, depth_gt: Tensor, downsample: int, d_bound: tuple[float, float, float]
) -> tuple[Tensor, Tensor]:
    """(probs [M, D], target metres [M]) of the cells whose min-pooled LiDAR depth lies in
    [d_min, d_max): the rows the depth loss trains on."""
    d = downsample_depth(depth_gt, downsample).reshape(-1)
    p = probs.float().permute(0, 2, 3, 1).reshape(-1, probs.shape[1])
    keep = (d < NO_POINT) & (d >= d_bound[0]) & (d < d_bound[1])
    return p[keep], d[keep]


def reference(stats: DepthStats) -> dict[str, float]:
    """Top-1 rate of always predicting the most frequent target bin (a depth-blind net)."""
    assert stats.hist is not None
    return {
        "most_frequent_bin": int(stats.hist.argmax()),
        "top1": float(stats.hist.max()) / stats.n,
    }


@torch.no_grad()
def evaluate(ckpt: Path) -> dict[str, object]:
    run = ckpt.parents[1]
    cfg = load_config(str(run / "config.yaml"), ["data.num_workers=0"])
    module = StageModule(cfg)
    load_weights(module.model, ckpt, prefer_ema=True)
    module.model.eval()
    student = getattr(module.model, "student", module.model)
    d_bound = (cfg.grid.d_bound[0], cfg.grid.d_bound[1], cfg.grid.d_bound[2])
    ds = cfg.student.view_transform.downsample
    dm = StageDataModule(cfg, needs_lidar=module.needs_lidar, needs_depth=True)
    # the evaluation dataset returns no depth maps (training reads them); unaugmented here
    dm.eval_dataset.return_depth = True
    stats: DepthStats | None = None
    for batch in dm.val_dataloader():
        out = student.forward_batch(batch)
        if stats is None:
            stats = DepthStats(out.depth.shape[1])
        probs, target = foreground(out.depth, batch.depth, ds, d_bound)
        stats.add(probs, target, d_bound)
    if stats is None:
        raise SystemExit(f"error: the val split of {run / 'config.yaml'} is empty")
    return {"ckpt": str(ckpt), "config": cfg.name, **stats.summary(), "reference": reference(stats)}


def table(rows: list[dict[str, object]]) -> str:
    keys = ["all", *[k for k in rows[0] if k[0].isdigit() or k.startswith(">")]]
    head = ["config", *[f"{k}: top-1 / +-1 bin / MAE m" for k in keys], "depth-blind top-1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["config"])]
        for k in keys:
            v = r[k]
            assert isinstance(v, dict)
            cells.append(f"{v['top1']:.3f} / {v['within_1_bin']:.3f} / {v['mae_m']:.2f}")
        ref = r["reference"]
        assert isinstance(ref, dict)
        cells.append(f"{ref['top1']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", action="append", required=True, help="student last.ckpt (repeat)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="default: <set dir>/depth_quality.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for c in args.ckpt:
        ckpt = Path(c)
        if not ckpt.is_file():
            raise SystemExit(f"error: {ckpt} not found: train the student first (accuracy.py)")
        rows.append(evaluate(ckpt))
    out = Path(args.out) if args.out else Path(args.ckpt[0]).parents[4] / "depth_quality.json"
    out.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    print(f"\n-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
