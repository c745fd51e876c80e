"""Result files: detections -> nuScenes result JSON, the JSON in and out, and the validation
of the submission format (METHOD.md 10).

The conversion follows the published evaluator: per box, name = ``CLASSES[label]``, nuScenes
size ``(w, l, h)``, orientation = rotation about +z by the yaw, velocity ``(vx, vy, 0)``; the
box is rotated by the mean key-frame camera ego quaternion (centre, orientation and velocity)
and then translated by the mean ego translation; the attribute follows from the class and the
speed (:func:`labeldistill.nuscenes_schema.attribute_for`). Devkit-free.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labeldistill.data.infos import info_path, load_infos
from labeldistill.errors import DataError, UserError
from labeldistill.geometry import normalize_quaternion, quaternion_multiply, quaternion_to_matrix
from labeldistill.io import atomic_write_json
from labeldistill.nuscenes_schema import ATTRIBUTE_NAMES, CATEGORY_TO_CLASS, attribute_for
from labeldistill.structures import CLASSES, Detections, SampleMeta, lwh_to_nusc_size

logger = logging.getLogger(__name__)

#: The ``meta`` block of every result file we write (camera-only method).
RESULT_META: dict[str, bool] = {
    "use_lidar": False,
    "use_camera": True,
    "use_radar": False,
    "use_map": False,
    "use_external": False,
}
MAX_BOXES_PER_SAMPLE = 500  # detection_cvpr_2019


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


# ---------------------------------------------------------------------------------------------
# Detections -> result JSON
# ---------------------------------------------------------------------------------------------


def _box_record(box: np.ndarray, score: float, label: int, meta: SampleMeta) -> dict[str, Any]:
    """One ego-frame box (x, y, z, l, w, h, yaw, vx, vy) -> a global-frame result record."""
    q_ego = normalize_quaternion(meta.ego_rotation)
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
    atomic_write_json(path, results)
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
            name = CATEGORY_TO_CLASS.get(ann["category_name"])
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
# Reading and validating a result file
# ---------------------------------------------------------------------------------------------


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


def validate_records(results_path: Path, results: Mapping[str, Any]) -> None:
    """Fail with one line on the first record the devkit would reject with an assertion."""
    lengths = {"translation": 3, "size": 3, "rotation": 4, "velocity": 2}
    for token, records in results.items():
        if not isinstance(records, list):
            raise UserError(f"result file {results_path}: sample {token} is not a list of boxes")
        if len(records) > MAX_BOXES_PER_SAMPLE:
            raise UserError(
                f"result file {results_path}: sample {token} has {len(records)} boxes, the "
                f"metric allows {MAX_BOXES_PER_SAMPLE}: keep the highest-scoring ones"
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
