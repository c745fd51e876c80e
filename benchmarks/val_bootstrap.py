"""How much of a mAP difference is the val set's chance: a bootstrap over val scenes (issue 10).

The seed spread of ``benchmarks/accuracy.py`` is the students' own: every seed is scored on the
same val objects, so it says nothing about how the figures would move on another draw of val
scenes. This script answers that for result files of one val split: it redraws the val scenes
with replacement (``--replicates`` times) and recomputes the official mAP of every file on each
draw, the same draw for every file, so that the difference of two files is paired the way the
benchmark pairs them.

The mAP is the devkit's (``detection_cvpr_2019``: centre-distance matching at 0.5 / 1 / 2 / 4 m,
101-point precision, min recall and precision 0.1, the mean over the ten classes), recomputed
from the devkit's own filtered GT and predictions: the greedy matching is done once per file (it
is per sample, so a draw that repeats a scene repeats its matches), then every draw only
re-weights the samples. On the full set (every scene once) it equals the devkit's mAP; the
script prints both. ``--band 20-30`` restricts GT and predictions to a distance band first
(a band's mAP averages the classes that have GT in the band, as in ``metrics.json``).

    D=benchmarks/_work/accuracy/data-0-12
    R=benchmarks/_work/accuracy/bench-data0-sps12/seed0/runs
    .venv/bin/python benchmarks/val_bootstrap.py --dataroot $D \\
        $R/bevdepth_tiny $R/labeldistill_tiny_label_only [--band 20-30]

Arguments are run directories (their ``eval/last/results_nusc.json``) or result files; the
first is the reference of the differences.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labeldistill.data.nuscenes_reader import open_nuscenes
from labeldistill.evaluation.nuscenes_eval import DISTANCE_BANDS, _band_boxes
from labeldistill.structures import CLASSES

#: The devkit's 101 recall points (``DetectionMetricData.nelem``).
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass
class ClassMatches:
    """The devkit's greedy matches of one class, one file.

    sample: [P] int, the sample index of each prediction, in the devkit's score order;
    tp: [P, T] bool, whether it matched a GT box at each of the T distance thresholds;
    npos: [S] int, GT boxes of the class per sample.
    """

    sample: np.ndarray
    tp: np.ndarray
    npos: np.ndarray


def match_class(
    gt_boxes: Any, pred_boxes: Any, name: str, samples: Sequence[str], dist_ths: Sequence[float]
) -> ClassMatches:
    """The devkit's ``accumulate`` matching for ``name`` at every threshold: predictions in
    descending score (ties: the later box first), each taking the nearest untaken GT box of its
    sample and class (centre distance in x, y) when nearer than the threshold."""
    index = {s: i for i, s in enumerate(samples)}
    preds = [b for b in pred_boxes.all if b.detection_name == name]
    order = [i for _, i in sorted((b.detection_score, i) for i, b in enumerate(preds))][::-1]
    gt_xy: dict[str, np.ndarray] = {}
    npos = np.zeros(len(samples), dtype=np.int64)
    for s in samples:
        boxes = [b.translation[:2] for b in gt_boxes[s] if b.detection_name == name]
        gt_xy[s] = np.asarray(boxes, dtype=np.float64).reshape(-1, 2)
        npos[index[s]] = len(boxes)
    tp = np.zeros((len(order), len(dist_ths)), dtype=bool)
    taken = {s: np.zeros((len(dist_ths), len(gt_xy[s])), dtype=bool) for s in samples}
    for row, i in enumerate(order):
        box = preds[i]
        xy = gt_xy[box.sample_token]
        if not len(xy):
            continue
        dist = np.hypot(*(xy - np.asarray(box.translation[:2], dtype=np.float64)).T)
        for t, th in enumerate(dist_ths):
            free = np.where(taken[box.sample_token][t], np.inf, dist)
            j = int(np.argmin(free))
            if free[j] < th:
                taken[box.sample_token][t, j] = True
                tp[row, t] = True
    sample = np.asarray([index[preds[i].sample_token] for i in order], dtype=np.int64)
    return ClassMatches(sample, tp, npos)


def average_precision(
    m: ClassMatches, weights: np.ndarray, min_recall: float = 0.1, min_precision: float = 0.1
) -> np.ndarray | None:
    """AP at every threshold [T] of a draw that counts sample s ``weights[s]`` times (the
    devkit's ``accumulate`` + ``calc_ap``); None when the draw has no GT of the class."""
    npos = int((weights * m.npos).sum())
    if npos == 0:
        return None
    tp = np.repeat(m.tp, weights[m.sample], axis=0)
    out = np.zeros(m.tp.shape[1])
    for t in range(m.tp.shape[1]):
        hits = np.cumsum(tp[:, t]).astype(float)
        if not len(hits) or hits[-1] == 0:
            continue  # no match at all: the devkit's "no predictions", AP 0
        misses = np.cumsum(~tp[:, t]).astype(float)
        prec = np.interp(RECALL_POINTS, hits / npos, hits / (hits + misses), right=0)
        prec = prec[round(100 * min_recall) + 1 :] - min_precision
        out[t] = float(np.mean(np.clip(prec, 0.0, None))) / (1.0 - min_precision)
    return out


def mean_ap(matches: dict[str, ClassMatches], weights: np.ndarray, present_only: bool) -> float:
    """The mean over classes of the mean AP over thresholds. ``present_only``: over the classes
    with GT in the draw (a band's mAP); otherwise over all classes, AP 0 without GT (the
    devkit's mAP)."""
    aps = []
    for name in CLASSES:
        ap = average_precision(matches[name], weights)
        if ap is None:
            if present_only:
                continue
            ap = np.zeros(1)
        aps.append(float(np.mean(ap)))
    return float(np.mean(aps)) if aps else 0.0


def scene_draws(scene_of_sample: np.ndarray, replicates: int, seed: int) -> np.ndarray:
    """[R, S] sample weights: each row redraws the scenes with replacement, every sample counting
    as often as its scene was drawn."""
    n = int(scene_of_sample.max()) + 1
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(replicates, n))
    counts = np.stack([np.bincount(d, minlength=n) for d in draws])
    return counts[:, scene_of_sample]


def load_matches(
    nusc: Any, results: Path, split: str, band: str | None
) -> tuple[dict[str, ClassMatches], list[str], float]:
    """Per-class matches of a result file, its sample order, and the devkit's own mAP of it
    (the whole set; for a band, the band mAP of ``metrics.json``'s definition)."""
    from nuscenes.eval.common.config import config_factory  # optional here: devkit
    from nuscenes.eval.detection.algo import accumulate, calc_ap
    from nuscenes.eval.detection.evaluate import DetectionEval

    cfg = config_factory("detection_cvpr_2019")
    # the devkit makes its output dir (plots) at construction: a throw-away one, nothing kept
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        ev = DetectionEval(
            nusc,
            config=cfg,
            result_path=str(results),
            eval_set=split,
            output_dir=tmp,
            verbose=False,
        )
    gt, pred = ev.gt_boxes, ev.pred_boxes
    if band is not None:
        low, high = next((lo, hi) for b, lo, hi in DISTANCE_BANDS if b == band)
        gt, pred = _band_boxes(gt, low, high), _band_boxes(pred, low, high)
    samples = list(gt.sample_tokens)
    matches = {n: match_class(gt, pred, n, samples, cfg.dist_ths) for n in CLASSES}
    devkit = []
    for n in CLASSES:
        if band is not None and not matches[n].npos.sum():
            continue
        aps = [
            calc_ap(
                accumulate(gt, pred, n, cfg.dist_fcn_callable, th),
                cfg.min_recall,
                cfg.min_precision,
            )
            for th in cfg.dist_ths
        ]
        devkit.append(float(np.mean(aps)))
    return matches, samples, float(np.mean(devkit))


def _results_file(arg: str) -> Path:
    path = Path(arg)
    if path.is_dir():
        path = path / "eval" / "last" / "results_nusc.json"
    if not path.is_file():
        raise SystemExit(f"error: no result file at {path}: pass a run dir or a results JSON")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "results", nargs="+", help="run dirs or result files; the first is the reference"
    )
    p.add_argument("--dataroot", required=True)
    p.add_argument("--version", default="v1.0-trainval")
    p.add_argument("--split", default="val")
    p.add_argument("--band", default=None, choices=[b for b, _, _ in DISTANCE_BANDS])
    p.add_argument("--replicates", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    files = [_results_file(a) for a in args.results]
    nusc = open_nuscenes(args.dataroot, args.version)
    loaded = [load_matches(nusc, f, args.split, args.band) for f in files]
    samples = loaded[0][1]
    if any(s != samples for _, s, _ in loaded):
        raise SystemExit("error: the result files cover different samples: use one val split")
    scenes: dict[str, int] = {}
    scene_of = np.asarray(
        [scenes.setdefault(nusc.get("sample", s)["scene_token"], len(scenes)) for s in samples]
    )
    present_only = args.band is not None
    ones = np.ones(len(samples), dtype=np.int64)
    draws = scene_draws(scene_of, args.replicates, args.seed)
    full = [mean_ap(m, ones, present_only) for m, _, _ in loaded]
    boot = np.asarray([[mean_ap(m, w, present_only) for w in draws] for m, _, _ in loaded])
    what = f"mAP {args.band} m" if args.band else "mAP"
    lines = [
        f"{what}, {len(samples)} val samples of {len(scenes)} scenes, {args.replicates} scene "
        f"draws (seed {args.seed}); intervals: 5th-95th percentile of the draws",
        "",
        "| result | devkit | recomputed | bootstrap std | 90 % interval |",
        "|---|---|---|---|---|",
    ]
    record: dict[str, Any] = {"band": args.band, "scenes": len(scenes), "rows": []}
    for f, (_, _, dk), v, b in zip(files, loaded, full, boot, strict=True):
        lo, hi = np.percentile(b, [5, 95])
        lines.append(f"| {f} | {dk:.4f} | {v:.4f} | {b.std(ddof=1):.4f} | {lo:.4f} to {hi:.4f} |")
        record["rows"].append({"file": str(f), "devkit": dk, "mAP": v, "std": float(b.std(ddof=1))})
    if len(files) > 1:
        lines += ["", f"Δ against {files[0]}:", ""]
        lines += ["| result | Δ | bootstrap std | 90 % interval | draws with Δ > 0 |"]
        lines += ["|---|---|---|---|---|"]
        for i in range(1, len(files)):
            d = boot[i] - boot[0]
            lo, hi = np.percentile(d, [5, 95])
            delta = full[i] - full[0]
            lines.append(
                f"| {files[i]} | {delta:+.4f} | {d.std(ddof=1):.4f} | {lo:+.4f} to {hi:+.4f} | "
                f"{(d > 0).mean():.0%} |"
            )
            record["rows"][i].update(delta=delta, delta_std=float(d.std(ddof=1)))
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
