"""Detections -> nuScenes result JSON -> official nuScenes detection metrics (METHOD.md 10).

The conversion follows the published evaluator: per box, name = ``CLASSES[label]``, nuScenes
size ``(w, l, h)``, orientation = rotation about +z by the yaw, velocity ``(vx, vy, 0)``; the
box is rotated by the mean key-frame camera ego quaternion (centre, orientation and velocity)
and then translated by the mean ego translation; the attribute follows from the class and the
speed (> 0.2 m/s = moving). The metric is the nuscenes-devkit ``DetectionEval`` with the
``detection_cvpr_2019`` config. On top of it we report AP by distance band (0-20 m, 20-30 m,
> 30 m from the ego, the devkit's ``ego_dist``), computed with the devkit's own ``accumulate`` /
``calc_ap`` on GT and predictions both filtered to the band.

The devkit is imported lazily inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labeldistill.data.io import atomic_write_text
from labeldistill.errors import DataError, UserError
from labeldistill.geometry import quaternion_to_matrix
from labeldistill.structures import CLASSES, Detections, SampleMeta, lwh_to_nusc_size

logger = logging.getLogger(__name__)

#: Speed (m/s) above which an object counts as moving (METHOD.md 10).
MOVING_SPEED = 0.2

#: The ``meta`` block of every result file we write (camera-only method).
RESULT_META: dict[str, bool] = {
    "use_lidar": False,
    "use_camera": True,
    "use_radar": False,
    "use_map": False,
    "use_external": False,
}

#: Distance bands from the ego (m) as (name, low inclusive, high exclusive).
DISTANCE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("0-20", 0.0, 20.0),
    ("20-30", 20.0, 30.0),
    (">30", 30.0, math.inf),
)

#: Splits of each devkit version (what ``create_splits_scenes`` knows and ``load_gt`` accepts).
VERSION_SPLITS: dict[str, tuple[str, ...]] = {
    "v1.0-trainval": ("train", "val", "train_detect", "train_track"),
    "v1.0-mini": ("mini_train", "mini_val"),
    "v1.0-test": ("test",),
}

#: Attribute of a moving / a standing object of each class (METHOD.md 10).
ATTRIBUTE_MOVING: dict[str, str] = {
    "car": "vehicle.moving",
    "truck": "vehicle.moving",
    "construction_vehicle": "vehicle.moving",
    "bus": "vehicle.moving",
    "trailer": "vehicle.moving",
    "barrier": "",
    "motorcycle": "cycle.with_rider",
    "bicycle": "cycle.with_rider",
    "pedestrian": "pedestrian.moving",
    "traffic_cone": "",
}
ATTRIBUTE_STATIC: dict[str, str] = {
    "car": "vehicle.parked",
    "truck": "vehicle.parked",
    "construction_vehicle": "vehicle.parked",
    "bus": "vehicle.stopped",
    "trailer": "vehicle.parked",
    "barrier": "",
    "motorcycle": "cycle.without_rider",
    "bicycle": "cycle.without_rider",
    "pedestrian": "pedestrian.standing",
    "traffic_cone": "",
}

#: nuScenes category -> detection class (the devkit's ``category_to_detection_name`` table, kept
#: here so that drawing does not import the devkit; a test checks that they agree).
DETECTION_NAME_OF_CATEGORY: dict[str, str] = {
    "movable_object.barrier": "barrier",
    "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.car": "car",
    "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle",
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer",
    "vehicle.truck": "truck",
}

_TP_NAMES: dict[str, str] = {
    "trans_err": "mATE",
    "scale_err": "mASE",
    "orient_err": "mAOE",
    "vel_err": "mAVE",
    "attr_err": "mAAE",
}
_MAX_BOXES_PER_SAMPLE = 500  # detection_cvpr_2019


# ---------------------------------------------------------------------------------------------
# Quaternions and poses
# ---------------------------------------------------------------------------------------------


def quaternion_multiply(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """Hamilton product ``a * b`` of quaternions (w, x, y, z) -> [4]."""
    aw, ax, ay, az = (float(v) for v in a)
    bw, bx, by, bz = (float(v) for v in b)
    return np.array(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dtype=np.float64,
    )


def _unit(q: Sequence[float]) -> np.ndarray:
    qa = np.asarray(q, dtype=np.float64)
    return qa / np.linalg.norm(qa)


def sample_meta_from_info(info: Mapping[str, Any]) -> SampleMeta:
    """The :class:`SampleMeta` of an info dict (METHOD.md 3.1 layout).

    ``global_from_ego`` is the component-wise mean of the six key camera ego poses (quaternions
    and translations, METHOD.md 2), exactly what the dataset uses for the GT boxes.
    """
    poses = [cam["ego_pose"] for cam in info["cam_infos"].values()]
    translation = np.mean([p["translation"] for p in poses], axis=0)
    rotation = np.mean([p["rotation"] for p in poses], axis=0)
    return SampleMeta(
        token=str(info["sample_token"]),
        ego_translation=tuple(float(v) for v in translation),  # type: ignore[arg-type]
        ego_rotation=tuple(float(v) for v in rotation),  # type: ignore[arg-type]
        scene_token=str(info.get("scene_token", "")),
        timestamp=int(info.get("timestamp", 0)),
    )


def attribute_for(name: str, speed: float) -> str:
    """Default attribute of a predicted box of class ``name`` moving at ``speed`` m/s."""
    table = ATTRIBUTE_MOVING if speed > MOVING_SPEED else ATTRIBUTE_STATIC
    return table[name]


# ---------------------------------------------------------------------------------------------
# Detections -> result JSON
# ---------------------------------------------------------------------------------------------


def _box_record(box: np.ndarray, score: float, label: int, meta: SampleMeta) -> dict[str, Any]:
    """One ego-frame box (x, y, z, l, w, h, yaw, vx, vy) -> a global-frame result record."""
    q_ego = _unit(meta.ego_rotation)
    rot = quaternion_to_matrix(q_ego)
    name = CLASSES[label]
    centre = rot @ box[0:3] + np.asarray(meta.ego_translation, dtype=np.float64)
    yaw = float(box[6])
    orientation = quaternion_multiply(q_ego, [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])
    velocity = rot @ np.array([box[7], box[8], 0.0])
    speed = math.hypot(float(box[7]), float(box[8]))
    return {
        "sample_token": meta.token,
        "translation": [float(v) for v in centre],
        "size": lwh_to_nusc_size(box[3:6]),
        "rotation": [float(v) for v in orientation],
        "velocity": [float(velocity[0]), float(velocity[1])],
        "detection_name": name,
        "detection_score": float(score),
        "attribute_name": attribute_for(name, speed),
    }


def results_from_detections(
    dets: Sequence[Detections], metas: Sequence[SampleMeta]
) -> dict[str, Any]:
    """Per-sample ego-frame detections -> nuScenes result dict (METHOD.md 10).

    dets[i]: boxes [M, 9] (x, y, z, l, w, h, yaw, vx, vy) ego frame, scores [M], labels [M]
    for the sample ``metas[i]``. Returns ``{'meta': RESULT_META, 'results': {token: [record]}}``
    with records in the global frame. No score threshold or cap is applied.
    """
    if len(dets) != len(metas):
        raise ValueError(f"{len(dets)} detections for {len(metas)} sample metas")
    results: dict[str, list[dict[str, Any]]] = {}
    for det, meta in zip(dets, metas, strict=True):
        boxes = det.boxes.detach().cpu().double().numpy().reshape(-1, 9)
        scores = det.scores.detach().cpu().double().numpy().reshape(-1)
        labels = det.labels.detach().cpu().long().numpy().reshape(-1)
        records = results.setdefault(meta.token, [])
        for box, score, label in zip(boxes, scores, labels, strict=True):
            records.append(_box_record(box, float(score), int(label), meta))
    return {"meta": dict(RESULT_META), "results": results}


def write_results(path: str | Path, results: Mapping[str, Any]) -> Path:
    """Write a result dict as JSON (atomically) -> the path."""
    path = Path(path)
    atomic_write_text(path, json.dumps(results))
    logger.info("wrote %s (%d samples)", path, len(results.get("results", {})))
    return path


def gt_as_results(
    dataroot: str | Path,
    version: str,
    split: str,
    infos: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ground truth of a split written as predictions (score 1.0) -> result dict.

    Annotations come from the info files (``infos``, default: the split's info file in
    ``dataroot``), mapped to detection classes with the devkit's table; annotations without
    LiDAR or radar points are left out (the devkit drops them from the GT, so they would be
    false positives). Attributes are the annotation's own; translation, size, rotation and
    velocity are the global-frame annotation values.
    """
    from labeldistill.data.infos import info_path, load_infos

    if infos is None:
        infos = load_infos(info_path(dataroot, split))
    attr_file = Path(dataroot) / version / "attribute.json"
    if not attr_file.is_file():
        raise DataError(f"{attr_file} is missing: check --dataroot and --version")
    attr_names = {a["token"]: a["name"] for a in json.loads(attr_file.read_text())}
    results: dict[str, list[dict[str, Any]]] = {}
    for info in infos:
        records = results.setdefault(str(info["sample_token"]), [])
        for ann in info["ann_infos"]:
            name = DETECTION_NAME_OF_CATEGORY.get(ann["category_name"])
            if name is None or ann.get("num_lidar_pts", 1) + ann.get("num_radar_pts", 0) == 0:
                continue
            tokens = list(ann.get("attribute_tokens", []))
            velocity = np.nan_to_num(np.asarray(ann.get("velocity", (0.0, 0.0)), dtype=float))
            records.append(
                {
                    "sample_token": str(info["sample_token"]),
                    "translation": [float(v) for v in ann["translation"]],
                    "size": [float(v) for v in ann["size"]],
                    "rotation": [float(v) for v in ann["rotation"]],
                    "velocity": [float(velocity[0]), float(velocity[1])],
                    "detection_name": name,
                    "detection_score": 1.0,
                    "attribute_name": attr_names[tokens[0]] if tokens else "",
                }
            )
    return {"meta": dict(RESULT_META), "results": results}


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def _check_split(version: str, split: str) -> None:
    if version not in VERSION_SPLITS:
        raise UserError(
            f"unknown nuScenes version '{version}': use one of {sorted(VERSION_SPLITS)}"
        )
    if split not in VERSION_SPLITS[version]:
        raise UserError(
            f"split '{split}' does not belong to {version}: use --split one of "
            f"{', '.join(VERSION_SPLITS[version])}"
        )


def _split_sample_tokens(nusc: Any, split: str) -> list[str]:
    """Sample tokens of a split, as the devkit's ``load_gt`` selects them."""
    from nuscenes.utils.splits import create_splits_scenes

    scenes = set(create_splits_scenes()[split])
    names = {s["token"]: s["name"] for s in nusc.scene}
    return [s["token"] for s in nusc.sample if names[s["scene_token"]] in scenes]


def load_results(results_path: Path) -> dict[str, Any]:
    if not results_path.is_file():
        raise UserError(f"result file {results_path} does not exist: check --results")
    try:
        data = json.loads(results_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(
            f"result file {results_path} is not valid JSON ({exc}): rewrite it"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise UserError(
            f"result file {results_path} has no 'results' mapping of sample token -> boxes: "
            "write it with labeldistill predict"
        )
    return data


def _validate_records(results_path: Path, results: Mapping[str, Any]) -> None:
    """Fail with one line on the first record the devkit would reject with an assertion."""
    from nuscenes.eval.detection.constants import ATTRIBUTE_NAMES

    lengths = {"translation": 3, "size": 3, "rotation": 4, "velocity": 2}
    for token, records in results.items():
        if not isinstance(records, list):
            raise UserError(f"result file {results_path}: sample {token} is not a list of boxes")
        if len(records) > _MAX_BOXES_PER_SAMPLE:
            raise UserError(
                f"result file {results_path}: sample {token} has {len(records)} boxes, the "
                f"metric allows {_MAX_BOXES_PER_SAMPLE}: keep the highest-scoring ones"
            )
        for rec in records:
            problem = ""
            if not isinstance(rec, dict):
                raise UserError(
                    f"result file {results_path}: sample {token}: a box is not a mapping"
                )
            for key, n in lengths.items():
                value = rec.get(key)
                if problem:
                    break
                if (
                    not isinstance(value, list)
                    or len(value) != n
                    or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
                    )
                ):
                    problem = f"'{key}' must be a list of {n} numbers"
                elif key != "velocity" and not np.all(np.isfinite(np.asarray(value, dtype=float))):
                    problem = f"'{key}' is not finite"
            score = rec.get("detection_score")
            if problem:
                pass
            elif rec.get("detection_name") not in CLASSES:
                problem = f"unknown detection_name {rec.get('detection_name')!r}"
            elif not isinstance(score, (int, float)) or isinstance(score, bool):
                problem = "'detection_score' must be a number"
            elif not (math.isfinite(score) and 0.0 <= score <= 1.0):
                problem = f"'detection_score' must be in [0, 1], got {score!r}"
            elif any(float(v) < 0 for v in rec["size"]):
                problem = f"'size' must not be negative, got {rec['size']!r}"
            elif float(np.linalg.norm(np.asarray(rec["rotation"], dtype=float))) < 1e-6:
                problem = "'rotation' is a zero quaternion (give a unit quaternion w, x, y, z)"
            elif rec.get("attribute_name", "") not in (*ATTRIBUTE_NAMES, ""):
                problem = f"unknown attribute_name {rec.get('attribute_name')!r}"
            elif rec.get("sample_token") != token:
                problem = f"record sample_token {rec.get('sample_token')!r} differs from its key"
            if problem:
                raise UserError(f"result file {results_path}: sample {token}: {problem}")


def _band_boxes(boxes: Any, low: float, high: float) -> Any:
    """EvalBoxes restricted to ``low <= ego_dist < high`` (every sample token kept)."""
    from nuscenes.eval.common.data_classes import EvalBoxes

    out = EvalBoxes()
    for token in boxes.sample_tokens:
        out.add_boxes(token, [b for b in boxes[token] if low <= b.ego_dist < high])
    return out


def _distance_band_ap(evaluator: Any) -> dict[str, Any]:
    """AP by distance band with the devkit's accumulate / calc_ap on a filtered evaluator.

    A band's mAP averages the classes that have GT in that band (a class absent from a band
    has no defined AP there; its entry is None).
    """
    from nuscenes.eval.detection.algo import accumulate, calc_ap

    cfg = evaluator.cfg
    band_map: dict[str, float | None] = {}
    band_class: dict[str, dict[str, float | None]] = {}
    band_counts: dict[str, int] = {}
    for band, low, high in DISTANCE_BANDS:
        gt = _band_boxes(evaluator.gt_boxes, low, high)
        pred = _band_boxes(evaluator.pred_boxes, low, high)
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
    }


@contextlib.contextmanager
def _empty_tolerant_filter() -> Any:
    """Let the devkit's ``DetectionEval`` accept a side without any box at all.

    ``filter_eval_boxes`` looks for a box to tell detection from tracking boxes and raises
    ``Invalid box type: None`` when every sample is empty (a young model whose every score is
    under the threshold). Filtering removes boxes only, so an empty set passes unchanged; every
    other set goes through the devkit's own filter.
    """
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
    num_gt_by_distance, and bookkeeping (version, split, num_samples, num_filled_samples).
    """
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    from labeldistill.data.nuscenes_reader import open_nuscenes

    results_path = Path(results_path)
    out_dir = Path(out_dir)
    _check_split(version, split)
    data = load_results(results_path)
    _validate_records(results_path, data["results"])
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
    for key, name in _TP_NAMES.items():
        metrics[name] = float(summary["tp_errors"][key])
    metrics["per_class_AP"] = {c: float(summary["mean_dist_aps"][c]) for c in CLASSES}
    metrics["per_class_tp_errors"] = {
        c: {_TP_NAMES[k]: _finite_or_none(v) for k, v in summary["label_tp_errors"][c].items()}
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
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
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


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """A printable table: mAP, NDS, the five TP errors, per-class AP, AP by distance band."""

    def fmt(v: Any) -> str:
        return "   -  " if v is None else f"{float(v):.4f}"

    lines = [
        f"nuScenes detection metrics ({metrics.get('version', '')} {metrics.get('split', '')})"
    ]
    lines.append(f"{'mAP':<22}{fmt(metrics['mAP'])}")
    lines.append(f"{'NDS':<22}{fmt(metrics['NDS'])}")
    for name in _TP_NAMES.values():
        lines.append(f"{name:<22}{fmt(metrics[name])}")
    lines.append("")
    lines.append(f"{'class':<22}{'AP':>8}")
    for cls, ap in metrics["per_class_AP"].items():
        lines.append(f"{cls:<22}{fmt(ap):>8}")
    bands = metrics.get("ap_by_distance")
    if bands:
        counts = metrics.get("num_gt_by_distance", {})
        lines.append("")
        lines.append(f"{'distance band (m)':<22}{'mAP':>8}{'GT boxes':>10}")
        for band, ap in bands.items():
            lines.append(f"{band:<22}{fmt(ap):>8}{counts.get(band, 0):>10}")
    return "\n".join(lines)
