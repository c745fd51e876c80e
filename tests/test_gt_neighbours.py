"""benchmarks/gt_neighbours.py on GT-as-results variants of the synthetic mini_val split."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest

from labeldistill.evaluation.results import gt_as_results, write_results

REPO = Path(__file__).resolve().parents[1]
VERSION, SPLIT = "v1.0-mini", "mini_val"


@pytest.fixture(scope="module")
def gn():
    spec = importlib.util.spec_from_file_location(
        "gt_neighbours", REPO / "benchmarks" / "gt_neighbours.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["gt_neighbours"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_neighbours_of_exact_relabelled_and_far_predictions(
    gn, synthetic_root: Path, tmp_path: Path
) -> None:
    from labeldistill.data.nuscenes_reader import open_nuscenes

    nusc = open_nuscenes(synthetic_root, VERSION)
    exact = gt_as_results(synthetic_root, VERSION, SPLIT)
    gt, pred = gn.load(nusc, write_results(tmp_path / "exact.json", exact), SPLIT)
    n = gn.neighbours(gt, pred, "car", 0.0, 1e9, radius=4.0)
    cars = sum(1 for b in gt.all if b.detection_name == "car")
    assert n.boxes == cars > 0
    # every car has its own box at distance 0, score 1 (other boxes within 4 m score 1 too,
    # but the best-scored is found among equals: the class can differ, the score cannot)
    assert n.same_class_score == [1.0] * cars
    assert min(n.top_distance) == 0.0 and sum(n.top_class.values()) == cars

    relabelled = copy.deepcopy(exact)
    far = copy.deepcopy(exact)
    for recs in relabelled["results"].values():
        for r in recs:
            r["detection_name"] = "truck" if r["detection_name"] == "car" else r["detection_name"]
            r["attribute_name"] = (
                "vehicle.parked" if r["detection_name"] == "truck" else r["attribute_name"]
            )
    for recs in far["results"].values():
        for r in recs:
            r["translation"][0] += 200.0
    gt, pred = gn.load(nusc, write_results(tmp_path / "relabelled.json", relabelled), SPLIT)
    n = gn.neighbours(gt, pred, "car", 0.0, 1e9, radius=4.0)
    assert n.same_class_score == [0.0] * cars and n.top_class["car"] == 0
    gt, pred = gn.load(nusc, write_results(tmp_path / "far.json", far), SPLIT)
    n = gn.neighbours(gt, pred, "car", 0.0, 1e9, radius=4.0)
    assert n.top_class == {gn.NONE: cars} and n.top_distance == []
    # a band without the class: nothing counted
    assert gn.neighbours(gt, pred, "car", 1e8, 1e9, radius=4.0).boxes == 0
