"""benchmarks/val_bootstrap.py: the recomputed mAP equals the devkit's (whole set and a band),
a hand-worked AP, the scene draws, the paired differences."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from labeldistill.evaluation.nuscenes_eval import evaluate_json
from labeldistill.evaluation.results import gt_as_results, write_results

REPO = Path(__file__).resolve().parents[1]
VERSION, SPLIT = "v1.0-mini", "mini_val"


@pytest.fixture(scope="module")
def vb():
    path = REPO / "benchmarks" / "val_bootstrap.py"
    spec = importlib.util.spec_from_file_location("val_bootstrap", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["val_bootstrap"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_hand_worked_average_precision(vb) -> None:
    # one sample, 3 GT; predictions in score order: hit, miss, hit -> recall 1/3, 1/3, 2/3 and
    # precision 1, 1/2, 2/3; the devkit's curve: 1 below recall 1/3, the line from (1/3, 1/2)
    # to (2/3, 2/3), 0 beyond 2/3; AP = mean over recall 0.11..1.00 of max(p - 0.1, 0) / 0.9
    m = vb.ClassMatches(
        np.zeros(3, dtype=np.int64), np.array([[True], [False], [True]]), np.array([3])
    )

    def p(r: float) -> float:
        if r < 1 / 3:
            return 1.0
        if r <= 2 / 3:
            return 0.5 + (r - 1 / 3) / (1 / 3) * (2 / 3 - 0.5)
        return 0.0

    expected = np.mean([max(p(k / 100) - 0.1, 0.0) / 0.9 for k in range(11, 101)])
    ap = vb.average_precision(m, np.array([1]))
    assert ap is not None and ap[0] == pytest.approx(expected, abs=1e-12)
    # a draw without the sample has no GT of the class
    assert vb.average_precision(m, np.array([0])) is None
    # no hit at all: AP 0
    none = vb.ClassMatches(np.zeros(2, dtype=np.int64), np.zeros((2, 1), dtype=bool), np.array([2]))
    assert vb.average_precision(none, np.array([1]))[0] == 0.0


def test_scene_draws(vb) -> None:
    scene_of = np.array([0, 0, 1, 1, 1, 2])
    w = vb.scene_draws(scene_of, 200, seed=3)
    assert w.shape == (200, 6)
    # samples of one scene count alike; each draw takes 3 scenes
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 2] == w[:, 4]).all()
    assert ((w[:, 0] + w[:, 2] + w[:, 5]) == 3).all()
    assert np.array_equal(w, vb.scene_draws(scene_of, 200, seed=3))  # deterministic
    assert (w[:, 5] == 0).any() and (w[:, 5] >= 2).any()  # with replacement


@pytest.fixture(scope="module")
def perturbed(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """GT as predictions, made imperfect: scores spread, every third box 0.7 m off, every
    fifth 3 m off, every seventh dropped, plus a false positive per sample."""
    rng = np.random.default_rng(0)
    res = copy.deepcopy(gt_as_results(synthetic_root, VERSION, SPLIT))
    for recs in res["results"].values():
        kept = []
        for i, r in enumerate(recs):
            if i % 7 == 6:
                continue
            r["detection_score"] = float(rng.uniform(0.05, 1.0))
            r["translation"][0] += 0.7 if i % 3 == 0 else (3.0 if i % 5 == 0 else 0.0)
            kept.append(r)
        if recs:
            fp = copy.deepcopy(recs[0])
            fp["translation"][1] += 15.0
            fp["detection_score"] = 0.5
            kept.append(fp)
        recs[:] = kept
    out = tmp_path_factory.mktemp("val_bootstrap")
    path = write_results(out / "perturbed.json", res)
    metrics = evaluate_json(synthetic_root, VERSION, SPLIT, path, out / "eval")
    return {"path": path, "metrics": metrics, "out": out}


def test_recomputed_map_equals_the_devkit(vb, synthetic_root: Path, perturbed: dict) -> None:
    from labeldistill.data.nuscenes_reader import open_nuscenes

    nusc = open_nuscenes(synthetic_root, VERSION)
    matches, samples, devkit = vb.load_matches(nusc, perturbed["path"], SPLIT, None)
    assert devkit == pytest.approx(perturbed["metrics"]["mAP"], abs=1e-12)
    assert 0.2 < devkit < 0.9  # imperfect on purpose
    ones = np.ones(len(samples), dtype=np.int64)
    assert vb.mean_ap(matches, ones, present_only=False) == pytest.approx(devkit, abs=1e-12)
    for band, value in perturbed["metrics"]["ap_by_distance"].items():
        if value is None:
            continue
        m, s, dk = vb.load_matches(nusc, perturbed["path"], SPLIT, band)
        assert dk == pytest.approx(value, abs=1e-12), band
        assert vb.mean_ap(m, np.ones(len(s), dtype=np.int64), True) == pytest.approx(value)


def test_cli_paired_differences(vb, synthetic_root: Path, perturbed: dict, capsys) -> None:
    out = perturbed["out"] / "boot.json"
    args = [str(perturbed["path"]), str(perturbed["path"]), "--dataroot", str(synthetic_root)]
    args += ["--version", VERSION, "--split", SPLIT, "--replicates", "20", "--out", str(out)]
    assert vb.main(args) == 0
    import json

    record = json.loads(out.read_text())
    # a file against itself: the same draws, no difference in any of them
    assert record["rows"][1]["delta"] == 0.0 and record["rows"][1]["delta_std"] == 0.0
    assert record["rows"][0]["mAP"] == pytest.approx(perturbed["metrics"]["mAP"], abs=1e-12)
    assert record["rows"][0]["std"] > 0.0  # the draws do move the mAP
    assert "| +0.0000 | 0.0000 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no result file"):
        vb.main([str(perturbed["out"] / "missing"), "--dataroot", str(synthetic_root)])
