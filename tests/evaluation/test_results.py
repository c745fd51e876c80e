"""Result files (METHOD.md 10): formatting against the devkit's Box / pyquaternion, the
attribute table, atomic writing, the mean camera pose, and the validation of bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from labeldistill.errors import UserError
from labeldistill.evaluation.nuscenes_eval import evaluate_json
from labeldistill.evaluation.results import (
    RESULT_META,
    results_from_detections,
    sample_meta_from_info,
    write_results,
)
from labeldistill.geometry import (
    apply,
    invert,
    quaternion_multiply,
    quaternion_yaw,
    transform,
)
from labeldistill.structures import CLASSES, Detections, SampleMeta

VERSION = "v1.0-mini"
SPLIT = "mini_val"

# ---------------------------------------------------------------------------------------------
# format conversion on hand-made inputs
# ---------------------------------------------------------------------------------------------

# A pose with yaw, pitch and roll, and a non-unit quaternion (the mean of camera poses is not
# normalised; the devkit's pyquaternion rotation normalises it).
EGO_ROTATION = tuple(
    1.02 * v
    for v in quaternion_multiply(
        quaternion_multiply(
            [math.cos(0.6), 0, 0, math.sin(0.6)], [math.cos(0.02), 0, math.sin(0.02), 0]
        ),
        [math.cos(0.015), math.sin(0.015), 0, 0],
    )
)
EGO_TRANSLATION = (410.5, 1180.25, 0.4)


def _hand_made() -> tuple[Detections, SampleMeta]:
    boxes = torch.tensor(
        [
            [10.0, 2.0, 0.5, 4.5, 1.9, 1.6, 0.3, 5.0, -0.5],  # car, moving
            [-3.0, 7.5, 0.9, 0.6, 0.7, 1.8, -2.8, 0.1, 0.1],  # pedestrian, standing
            [25.0, -12.0, 1.2, 12.0, 2.9, 3.4, 3.1, 0.0, 0.15],  # bus, stopped
            [5.0, 5.0, 0.3, 0.4, 0.4, 0.9, 1.0, 0.0, 0.0],  # traffic cone
        ],
        dtype=torch.float32,
    )
    labels = torch.tensor([0, 8, 3, 9])
    scores = torch.tensor([0.9, 0.5, 0.25, 0.05])
    meta = SampleMeta(token="tok0", ego_translation=EGO_TRANSLATION, ego_rotation=EGO_ROTATION)
    return Detections(boxes, scores, labels), meta


def test_ego_to_global_matches_devkit_box() -> None:
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    det, meta = _hand_made()
    out = results_from_detections(
        [det, Detections.empty()], [meta, SampleMeta("tok1", (0, 0, 0), (1, 0, 0, 0))]
    )
    assert out["meta"] == RESULT_META
    assert out["results"]["tok1"] == []
    records = out["results"]["tok0"]
    assert len(records) == 4
    for box, score, label, rec in zip(det.boxes.double().numpy(), det.scores, det.labels, records):
        ref = Box(
            center=box[0:3].tolist(),
            size=[box[4], box[3], box[5]],
            orientation=Quaternion(axis=[0, 0, 1], radians=float(box[6])),
            velocity=(box[7], box[8], 0.0),
        )
        ref.rotate(Quaternion(list(EGO_ROTATION)))
        ref.translate(np.array(EGO_TRANSLATION))
        assert rec["sample_token"] == "tok0"
        np.testing.assert_allclose(rec["translation"], ref.center, atol=1e-9)
        np.testing.assert_allclose(rec["size"], ref.wlh, atol=1e-6)
        q = np.array(rec["rotation"])
        sign = 1.0 if np.dot(q, ref.orientation.elements) >= 0 else -1.0
        np.testing.assert_allclose(sign * q, ref.orientation.elements, atol=1e-9)
        np.testing.assert_allclose(rec["velocity"], ref.velocity[:2], atol=1e-9)
        assert rec["detection_name"] == CLASSES[int(label)]
        assert rec["detection_score"] == pytest.approx(float(score))
    assert [r["attribute_name"] for r in records] == [
        "vehicle.moving",
        "pedestrian.standing",
        "vehicle.stopped",
        "",
    ]


def test_round_trip_global_to_ego_to_global() -> None:
    """Global box -> ego (inverse pose, independent formulas) -> results_from_detections."""
    rng = np.random.default_rng(0)
    q_ego = np.array(EGO_ROTATION) / np.linalg.norm(EGO_ROTATION)
    ego_from_global = invert(transform(q_ego, EGO_TRANSLATION))
    centres = rng.uniform(-40, 40, (6, 3)) + np.array(EGO_TRANSLATION)
    yaws = rng.uniform(-math.pi, math.pi, 6)
    boxes = []
    for c, yaw in zip(centres, yaws):
        q_glob = quaternion_multiply(q_ego, [math.cos(yaw / 2), 0, 0, math.sin(yaw / 2)])
        e = apply(ego_from_global, c[None])[0]
        # the box's yaw in the ego frame, read back from the global quaternion
        q_rel = quaternion_multiply(q_ego * np.array([1, -1, -1, -1]), q_glob)
        boxes.append([*e, 4.0, 2.0, 1.5, quaternion_yaw(q_rel), 0.0, 0.0])
    det = Detections(
        torch.tensor(boxes, dtype=torch.float64), torch.ones(6), torch.zeros(6, dtype=torch.long)
    )
    meta = SampleMeta("t", EGO_TRANSLATION, EGO_ROTATION)
    recs = results_from_detections([det], [meta])["results"]["t"]
    np.testing.assert_allclose([r["translation"] for r in recs], centres, atol=1e-9)
    for r, yaw in zip(recs, yaws):
        expected = quaternion_multiply(q_ego, [math.cos(yaw / 2), 0, 0, math.sin(yaw / 2)])
        assert abs(np.dot(r["rotation"], expected)) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize(
    ("name", "moving", "standing"),
    [
        ("car", "vehicle.moving", "vehicle.parked"),
        ("truck", "vehicle.moving", "vehicle.parked"),
        ("construction_vehicle", "vehicle.moving", "vehicle.parked"),
        ("bus", "vehicle.moving", "vehicle.stopped"),
        ("trailer", "vehicle.moving", "vehicle.parked"),
        ("barrier", "", ""),
        ("motorcycle", "cycle.with_rider", "cycle.without_rider"),
        ("bicycle", "cycle.with_rider", "cycle.without_rider"),
        ("pedestrian", "pedestrian.moving", "pedestrian.standing"),
        ("traffic_cone", "", ""),
    ],
)
def test_attribute_rules(name: str, moving: str, standing: str) -> None:
    label = CLASSES.index(name)
    # speeds 0.21 (moving: 0.15^2 + 0.147^2 > 0.2^2) and 0.199 (standing), and 0
    boxes = torch.tensor(
        [
            [1, 1, 0, 1, 1, 1, 0, 0.15, 0.147],
            [1, 1, 0, 1, 1, 1, 0, 0.199, 0.0],
            [1, 1, 0, 1, 1, 1, 0, 0.0, 0.0],
        ],
        dtype=torch.float64,
    )
    det = Detections(boxes, torch.ones(3), torch.full((3,), label))
    recs = results_from_detections([det], [SampleMeta("s", (0, 0, 0), (1, 0, 0, 0))])["results"][
        "s"
    ]
    assert [r["attribute_name"] for r in recs] == [moving, standing, standing]


def test_write_results_is_json_and_atomic(tmp_path: Path) -> None:
    det, meta = _hand_made()
    res = results_from_detections([det], [meta])
    path = write_results(tmp_path / "sub" / "r.json", res)
    assert json.loads(path.read_text()) == res
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary left


def test_sample_meta_is_the_mean_camera_pose() -> None:
    cams = {
        f"CAM_{i}": {
            "ego_pose": {
                "translation": [float(i), 2.0 * i, 0.0],
                "rotation": [1.0, 0.0, 0.0, 0.1 * i],
            }
        }
        for i in range(6)
    }
    meta = sample_meta_from_info({"sample_token": "x", "cam_infos": cams, "timestamp": 5})
    assert meta.ego_translation == pytest.approx((2.5, 5.0, 0.0))
    assert meta.ego_rotation == pytest.approx((1.0, 0.0, 0.0, 0.25))
    assert meta.token == "x" and meta.timestamp == 5


def test_bad_inputs_raise_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        evaluate_json(tmp_path, VERSION, SPLIT, tmp_path / "nope.json", tmp_path / "o")
    with pytest.raises(UserError, match="mini_train, mini_val"):
        evaluate_json(tmp_path, VERSION, "val", tmp_path / "nope.json", tmp_path / "o")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        evaluate_json(tmp_path, VERSION, SPLIT, bad, tmp_path / "o")
    det, meta = _hand_made()
    res = results_from_detections([det], [meta])
    res["results"]["tok0"][1]["detection_name"] = "unicorn"
    write_results(bad, res)
    with pytest.raises(UserError, match="unknown detection_name 'unicorn'"):
        evaluate_json(tmp_path, VERSION, SPLIT, bad, tmp_path / "o")
    assert not (tmp_path / "o").exists()
