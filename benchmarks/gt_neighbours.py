"""What a detector puts near the GT boxes of one class in one distance band (issue 10).

AP says that a class is found worse at some range, not how: missed, found but scored low,
placed off, or taken for another class. For every GT box of ``CLASS`` with ``LOW <= ego_dist <
HIGH`` (the devkit's filtered GT and predictions of the val split), this takes the predictions
of any class within ``--radius`` metres of its centre and reports, per result file:

* how often each class is the best-scored of them (or none is there);
* the mean best score of a prediction of the right class there (0 when none);
* the mean centre distance of the best-scored one.

    R=benchmarks/_work/accuracy/bench-data0-sps12/seed0/runs
    .venv/bin/python benchmarks/gt_neighbours.py --dataroot benchmarks/_work/accuracy/data-0-12 \\
        bus 20 30 $R/bevdepth_tiny $R/labeldistill_tiny_label_only

Arguments are run directories (their ``eval/last/results_nusc.json``) or result files.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labeldistill.data.nuscenes_reader import open_nuscenes
from labeldistill.structures import CLASSES

NONE = "none"


@dataclass
class Neighbours:
    """Per GT box of the class and band: what is near it in one result file."""

    boxes: int = 0
    top_class: Counter = field(default_factory=Counter)  # best-scored class within the radius
    same_class_score: list[float] = field(default_factory=list)  # 0 when none of the class
    top_distance: list[float] = field(default_factory=list)  # only where something is near


def neighbours(
    gt_boxes: Any, pred_boxes: Any, name: str, low: float, high: float, radius: float
) -> Neighbours:
    out = Neighbours()
    for token in gt_boxes.sample_tokens:
        preds = pred_boxes[token]
        xy = np.asarray([p.translation[:2] for p in preds], dtype=np.float64).reshape(-1, 2)
        for gt in gt_boxes[token]:
            if gt.detection_name != name or not low <= gt.ego_dist < high:
                continue
            out.boxes += 1
            dist = np.hypot(*(xy - np.asarray(gt.translation[:2])).T)
            near = np.flatnonzero(dist < radius)
            if not len(near):
                out.top_class[NONE] += 1
                out.same_class_score.append(0.0)
                continue
            best = max(near, key=lambda i: preds[i].detection_score)
            out.top_class[preds[best].detection_name] += 1
            out.top_distance.append(float(dist[best]))
            scores = [preds[i].detection_score for i in near if preds[i].detection_name == name]
            out.same_class_score.append(max(scores) if scores else 0.0)
    return out


def load(nusc: Any, results: Path, split: str) -> tuple[Any, Any]:
    """The devkit's filtered (GT, predictions) of a result file."""
    from nuscenes.eval.common.config import config_factory  # optional here: devkit
    from nuscenes.eval.detection.evaluate import DetectionEval

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        ev = DetectionEval(
            nusc,
            config=config_factory("detection_cvpr_2019"),
            result_path=str(results),
            eval_set=split,
            output_dir=tmp,
            verbose=False,
        )
    return ev.gt_boxes, ev.pred_boxes


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cls", choices=CLASSES, metavar="CLASS")
    p.add_argument("low", type=float)
    p.add_argument("high", type=float)
    p.add_argument("results", nargs="+", help="run dirs or result files")
    p.add_argument("--dataroot", required=True)
    p.add_argument("--version", default="v1.0-trainval")
    p.add_argument("--split", default="val")
    p.add_argument("--radius", type=float, default=4.0)
    args = p.parse_args(argv)
    files = []
    for arg in args.results:
        path = (
            Path(arg) / "eval" / "last" / "results_nusc.json" if Path(arg).is_dir() else Path(arg)
        )
        if not path.is_file():
            raise SystemExit(f"error: no result file at {path}: pass a run dir or a results JSON")
        files.append(path)
    nusc = open_nuscenes(args.dataroot, args.version)
    print(
        f"{args.cls} GT at {args.low:g}-{args.high:g} m, predictions within {args.radius:g} m\n\n"
        "| result | GT boxes | best-scored class near it | mean best score of the class | "
        "mean distance of the best-scored |\n|---|---|---|---|---|"
    )
    for path in files:
        n = neighbours(*load(nusc, path, args.split), args.cls, args.low, args.high, args.radius)
        top = ", ".join(f"{c} {k}" for c, k in n.top_class.most_common(4))
        score = float(np.mean(n.same_class_score)) if n.boxes else 0.0
        dist = f"{np.mean(n.top_distance):.2f} m" if n.top_distance else "-"
        print(f"| {path} | {n.boxes} | {top} | {score:.3f} | {dist} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
