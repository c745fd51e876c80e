"""Official nuScenes detection metrics of a result file (METHOD.md 10), plus AP by distance.

The metric is the nuscenes-devkit ``DetectionEval`` with the ``detection_cvpr_2019`` config.
On top of it we report AP by distance band (0-20 m, 20-30 m, > 30 m from the ego, the devkit's
``ego_dist``), computed with the devkit's own ``accumulate`` / ``calc_ap`` on GT and
predictions both filtered to the band. Result files are read, validated and written by
:mod:`labeldistill.evaluation.results`; the printable table is
:func:`labeldistill.evaluation.report.format_metrics`.

The devkit is imported lazily inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labeldistill.data.nuscenes_reader import open_nuscenes
from labeldistill.errors import DataError, UserError
from labeldistill.evaluation.results import (
    RESULT_META,
    load_results,
    results_from_detections,
    validate_records,
    write_results,
)
from labeldistill.io import atomic_write_json
from labeldistill.nuscenes_schema import DEVKIT_SPLITS
from labeldistill.structures import CLASSES, Detections, SampleMeta

logger = logging.getLogger(__name__)

#: Distance bands from the ego (m) as (name, low inclusive, high exclusive).
DISTANCE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("0-20", 0.0, 20.0),
    ("20-30", 20.0, 30.0),
    (">30", 30.0, math.inf),
)

#: The devkit's true-positive error keys -> our metric names.
TP_NAMES: dict[str, str] = {
    "trans_err": "mATE",
    "scale_err": "mASE",
    "orient_err": "mAOE",
    "vel_err": "mAVE",
    "attr_err": "mAAE",
}


def _check_split(version: str, split: str) -> None:
    if version not in DEVKIT_SPLITS:
        raise UserError(f"unknown nuScenes version '{version}': use one of {sorted(DEVKIT_SPLITS)}")
    if split not in DEVKIT_SPLITS[version]:
        raise UserError(
            f"split '{split}' does not belong to {version}: use --split one of "
            f"{', '.join(DEVKIT_SPLITS[version])}"
        )


def _split_sample_tokens(nusc: Any, split: str) -> list[str]:
    """Sample tokens of a split, as the devkit's ``load_gt`` selects them."""
    from nuscenes.utils.splits import create_splits_scenes  # optional here: nuscenes devkit

    scenes = set(create_splits_scenes()[split])
    names = {s["token"]: s["name"] for s in nusc.scene}
    return [s["token"] for s in nusc.sample if names[s["scene_token"]] in scenes]


def _band_boxes(boxes: Any, low: float, high: float) -> Any:
    """EvalBoxes restricted to ``low <= ego_dist < high`` (every sample token kept)."""
    from nuscenes.eval.common.data_classes import EvalBoxes  # optional here: nuscenes devkit

    out = EvalBoxes()
    for token in boxes.sample_tokens:
        out.add_boxes(token, [b for b in boxes[token] if low <= b.ego_dist < high])
    return out


def _instance_of_gt(nusc: Any, gt_boxes: Any) -> dict[tuple[str, tuple[float, ...]], str]:
    """(sample token, translation) -> instance token of every annotation of the GT's samples.

    The devkit's ``load_gt`` copies ``sample_annotation['translation']`` into each GT box, so the
    pair names the annotation exactly (a sample holds no two annotations at one centre).
    """
    out: dict[tuple[str, tuple[float, ...]], str] = {}
    for token in gt_boxes.sample_tokens:
        for ann_token in nusc.get("sample", token)["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            out[(token, tuple(float(v) for v in ann["translation"]))] = ann["instance_token"]
    return out


def _distance_band_ap(evaluator: Any) -> dict[str, Any]:
    """AP by distance band with the devkit's accumulate / calc_ap on a filtered evaluator.

    A band's mAP averages the classes that have GT in that band (a class absent from a band
    has no defined AP there; its entry is None). Next to the GT box counts, the number of
    distinct physical objects (instance tokens) behind them: consecutive samples of a scene
    show the same objects, so a band's boxes can come from a handful of objects, and its AP is
    then no more certain than that handful allows.
    """
    from nuscenes.eval.detection.algo import accumulate, calc_ap  # optional here: devkit

    cfg = evaluator.cfg
    instance_of = _instance_of_gt(evaluator.nusc, evaluator.gt_boxes)
    band_map: dict[str, float | None] = {}
    band_class: dict[str, dict[str, float | None]] = {}
    band_counts: dict[str, int] = {}
    band_objects: dict[str, int] = {}
    class_counts: dict[str, dict[str, int]] = {}
    class_objects: dict[str, dict[str, int]] = {}
    for band, low, high in DISTANCE_BANDS:
        gt = _band_boxes(evaluator.gt_boxes, low, high)
        pred = _band_boxes(evaluator.pred_boxes, low, high)
        objects: dict[str, set[str]] = {name: set() for name in CLASSES}
        boxes: dict[str, int] = dict.fromkeys(CLASSES, 0)
        for box in gt.all:
            boxes[box.detection_name] += 1
            key = (box.sample_token, tuple(float(v) for v in box.translation))
            # a GT box whose annotation cannot be named counts as an object of its own
            objects[box.detection_name].add(instance_of.get(key, f"{key}"))
        class_counts[band] = boxes
        class_objects[band] = {name: len(objects[name]) for name in CLASSES}
        band_objects[band] = len(set().union(*objects.values()))
        per_class: dict[str, float | None] = {}
        present_names = {b.detection_name for b in gt.all}
        for name in CLASSES:
            if name not in present_names:
                per_class[name] = None
                continue
            aps = [
                calc_ap(
                    accumulate(gt, pred, name, cfg.dist_fcn_callable, th),
                    cfg.min_recall,
                    cfg.min_precision,
                )
                for th in cfg.dist_ths
            ]
            per_class[name] = float(np.mean(aps))
        present = [v for v in per_class.values() if v is not None]
        band_map[band] = float(np.mean(present)) if present else None
        band_class[band] = per_class
        band_counts[band] = len(gt.all)
    return {
        "ap_by_distance": band_map,
        "ap_by_distance_per_class": band_class,
        "num_gt_by_distance": band_counts,
        "num_objects_by_distance": band_objects,
        "num_gt_by_distance_per_class": class_counts,
        "num_objects_by_distance_per_class": class_objects,
    }


@contextlib.contextmanager
def _empty_tolerant_filter() -> Any:
    """Let the devkit's ``DetectionEval`` accept a side without any box at all.

    ``filter_eval_boxes`` looks for a box to tell detection from tracking boxes and raises
    ``Invalid box type: None`` when every sample is empty (a young model whose every score is
    under the threshold). Filtering removes boxes only, so an empty set passes unchanged; every
    other set goes through the devkit's own filter.
    """
    # optional here: nuscenes devkit
    from nuscenes.eval.detection import evaluate as devkit_evaluate

    original = devkit_evaluate.filter_eval_boxes

    def tolerant(nusc: Any, eval_boxes: Any, max_dist: Any, verbose: bool = False) -> Any:
        if not any(len(boxes) for boxes in eval_boxes.boxes.values()):
            return eval_boxes
        return original(nusc, eval_boxes, max_dist, verbose=verbose)

    devkit_evaluate.filter_eval_boxes = tolerant
    try:
        yield
    finally:
        devkit_evaluate.filter_eval_boxes = original


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def evaluate_json(
    dataroot: str | Path,
    version: str,
    split: str,
    results_path: str | Path,
    out_dir: str | Path,
    render_curves: bool = False,
) -> dict[str, Any]:
    """Official nuScenes detection metrics of a result file, plus AP by distance band.

    Leaves the devkit's ``metrics_summary.json`` / ``metrics_details.json`` and our
    ``metrics.json`` (the returned dict) in ``out_dir``. Samples of the split missing from the
    result file get empty lists (logged; the devkit requires every sample); tokens that are not
    in the split raise :class:`UserError`.

    Returns a dict with mAP, NDS, mATE, mASE, mAOE, mAVE, mAAE, per_class_AP {class: AP},
    per_class_tp_errors, ap_by_distance {'0-20', '20-30', '>30': mAP}, ap_by_distance_per_class,
    num_gt_by_distance, num_objects_by_distance (distinct instance tokens),
    num_gt_by_distance_per_class, num_objects_by_distance_per_class, and bookkeeping (version,
    split, num_samples, num_filled_samples).
    """
    # optional here: nuscenes devkit (heavy; imported only to evaluate)
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    results_path = Path(results_path)
    out_dir = Path(out_dir)
    _check_split(version, split)
    data = load_results(results_path)
    validate_records(results_path, data["results"])
    nusc = open_nuscenes(dataroot, version)
    tokens = _split_sample_tokens(nusc, split)
    if not tokens:
        raise DataError(
            f"split {split} of {Path(dataroot) / version} has no samples: check --split"
        )
    wanted = set(tokens)
    unknown = [t for t in data["results"] if t not in wanted]
    if unknown:
        raise UserError(
            f"result file {results_path} names {len(unknown)} sample(s) that are not in "
            f"{version} {split} (e.g. {unknown[0]}): evaluate it on the split it was made for"
        )
    missing = [t for t in tokens if t not in data["results"]]
    eval_input = results_path
    out_dir.mkdir(parents=True, exist_ok=True)
    if missing or not isinstance(data.get("meta"), dict):
        if missing:
            logger.warning(
                "%d of %d samples of %s are missing from %s: evaluated as empty predictions",
                len(missing),
                len(tokens),
                split,
                results_path,
            )
        filled = {t: data["results"].get(t, []) for t in tokens}
        meta = data["meta"] if isinstance(data.get("meta"), dict) else dict(RESULT_META)
        eval_input = write_results(
            out_dir / "results_filled.json", {"meta": meta, "results": filled}
        )

    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), _empty_tolerant_filter():
        evaluator = DetectionEval(
            nusc,
            config=config_factory("detection_cvpr_2019"),
            result_path=str(eval_input),
            eval_set=split,
            output_dir=str(out_dir),
            verbose=False,
        )
        summary = evaluator.main(plot_examples=0, render_curves=render_curves)
    logger.debug("devkit output:\n%s", captured.getvalue())
    bands = _distance_band_ap(evaluator)

    metrics: dict[str, Any] = {
        "mAP": float(summary["mean_ap"]),
        "NDS": float(summary["nd_score"]),
    }
    for key, name in TP_NAMES.items():
        metrics[name] = float(summary["tp_errors"][key])
    metrics["per_class_AP"] = {c: float(summary["mean_dist_aps"][c]) for c in CLASSES}
    metrics["per_class_tp_errors"] = {
        c: {TP_NAMES[k]: _finite_or_none(v) for k, v in summary["label_tp_errors"][c].items()}
        for c in CLASSES
    }
    metrics.update(bands)
    metrics.update(
        {
            "version": version,
            "split": split,
            "results": str(results_path),
            "num_samples": len(tokens),
            "num_filled_samples": len(missing),
        }
    )
    atomic_write_json(out_dir / "metrics.json", metrics, indent=2)
    logger.info(
        "%s %s: mAP %.4f NDS %.4f (metrics in %s)",
        version,
        split,
        metrics["mAP"],
        metrics["NDS"],
        out_dir,
    )
    return metrics


def evaluate_detections(
    dets: Sequence[Detections],
    metas: Sequence[SampleMeta],
    dataroot: str | Path,
    version: str,
    split: str,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Write ``out_dir/results_nusc.json`` from ego-frame detections and evaluate it."""
    path = write_results(Path(out_dir) / "results_nusc.json", results_from_detections(dets, metas))
    return evaluate_json(dataroot, version, split, path, out_dir)
