"""benchmarks/accuracy.py: the tables (means, spreads, per-seed values, bands, paired
differences) and the learning curves, from hand-made pipeline results."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from labeldistill.recipes.pipeline import PipelineResult, StageResult

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def acc():
    spec = importlib.util.spec_from_file_location("accuracy", REPO / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _metrics(m: float, far: float | None = 0.1) -> dict:
    out = {"mAP": m, "NDS": m + 0.1, "mATE": 0.5, "mASE": 0.3, "mAOE": 0.7, "mAVE": 1.0}
    out["mAAE"] = 0.2
    out["ap_by_distance"] = {"0-20": 2 * m, "20-30": m, ">30": far}
    return out


def _results(tmp_path: Path) -> dict[int, PipelineResult]:
    values = {  # seed -> (baseline mAP, LabelDistill mAP)
        0: (0.10, 0.15),
        1: (0.12, 0.16),
        2: (0.14, 0.20),
    }
    results = {}
    for seed, (base, ld) in values.items():
        rows = [StageResult("lidar_teacher", "t", Path("t"), _metrics(0.5))]
        for key, m in (("baseline", base), ("labeldistill", ld)):
            run = tmp_path / f"s{seed}" / key
            eval_dir = run / "eval" / "last"
            eval_dir.mkdir(parents=True)
            (run / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_steps": 300}}))
            for epoch, step in ((0, 100), (1, 200)):
                d = run / "eval" / f"val_epoch_{epoch}"
                d.mkdir(parents=True)
                mm = {"mAP": m * step / 300, "NDS": 0.2, "global_step": step}
                (d / "metrics.json").write_text(json.dumps(mm))
            rows.append(StageResult(key, key, Path("c"), _metrics(m), eval_dir))
        results[seed] = PipelineResult(tmp_path / f"s{seed}", rows)
    return results


def test_tables_means_per_seed_and_paired_differences(acc, tmp_path: Path) -> None:
    results = _results(tmp_path)
    text = acc.tables(acc.collect(results), "bench", [0, 1, 2])
    lines = text.splitlines()
    base = next(ln for ln in lines if ln.startswith("| baseline BEVDepth | 0.1"))
    # mean 0.12, sample std 0.02 over the three seeds; NDS = mAP + 0.1
    assert base.startswith("| baseline BEVDepth | 0.1200 ± 0.0200 | 0.2200 ± 0.0200 |")
    assert base.endswith("| 3 |")
    assert "| LabelDistill | 0.1500 / 0.1600 / 0.2000 | 0.2500 / 0.2600 / 0.3000 |" in lines
    # distance bands: 0-20 = 2 mAP
    assert any(
        ln.startswith("| LabelDistill | 0.3400 ± 0.0529 | 0.1700 ± 0.0265 |") for ln in lines
    )
    # paired: differences 0.05, 0.04, 0.06 -> 0.05 ± 0.01; >30 m both 0.1 -> 0
    assert "| LabelDistill | 0.0500 ± 0.0100 | 0.0500 ± 0.0100 | 0.0000 ± 0.0000 |" in lines


def test_learning_curves_and_png(acc, tmp_path: Path) -> None:
    curves = acc.learning_curves(_results(tmp_path))
    assert set(curves) == {"baseline", "labeldistill"}
    assert curves["baseline"][1] == [
        [100, pytest.approx(0.04), 0.2],
        [200, pytest.approx(0.08), 0.2],
        [300, 0.12, pytest.approx(0.22)],
    ]
    png = acc.plot_curves(curves, tmp_path / "curves.png")
    from PIL import Image

    with Image.open(png) as img:
        assert img.size[0] > 500 and img.size[1] > 200


def test_parallel_tasks_pair_each_seed_distilled_rows_first(acc) -> None:
    tasks = acc.parallel_tasks([0, 1], ["labeldistill", "lidar_only"])
    assert tasks == [
        (0, "labeldistill"),
        (0, "lidar_only"),
        (0, "baseline"),
        (1, "labeldistill"),
        (1, "lidar_only"),
        (1, "baseline"),
    ]


def test_parallel_tasks_without_baseline_and_row_order(acc) -> None:
    """--no-baseline trains the distilled rows only; an ablation given as --variant is the
    same row as with --ablations, listed once, in table order."""
    assert acc.parallel_tasks([1, 2], ["label_only"], baseline=False) == [
        (1, "label_only"),
        (2, "label_only"),
    ]
    assert acc.row_keys(True, False, []) == ["labeldistill"]
    assert acc.row_keys(False, True, ["label_only", "level0_detached", "level0_detached"]) == [
        "lidar_only",
        "label_only",
        "no_partition",
        "level0_detached",
    ]
    assert acc.row_keys(False, False, ["label_only"]) == ["label_only"]


def test_one_seed_shows_no_spread(acc) -> None:
    """A single seed has no sample std: the table says so instead of printing ± 0."""
    assert acc._mean_std([0.0246]) == "0.0246 (one seed)"
    assert acc._mean_std([0.1, 0.3]) == "0.2000 ± 0.1414"
    assert acc._mean_std([]) == "-"


def test_records_round_trip_merge_and_missing_values(acc, tmp_path: Path) -> None:
    """accuracy.json of two runs (seeds 0-1 main rows; seed 0 of an ablation and a better
    teacher row) merge into the tables of all of them; a curve value not recorded (None) is
    left out of the picture, not drawn as 0."""
    results = _results(tmp_path)
    per = acc.collect({s: results[s] for s in (0, 1)})
    curves = acc.learning_curves({s: results[s] for s in (0, 1)})
    curves["baseline"][1][0][2] = None  # NDS of one epoch not kept
    first = acc.write_record(tmp_path / "a.json", "bench", per, curves, date="2026-12-04")
    abl = {"lidar_only": {0: _metrics(0.3)}, "lidar_teacher": {0: _metrics(0.6)}}
    second = acc.write_record(
        tmp_path / "b.json", "bench", abl, {"lidar_only": {0: [[300, 0.3, 0.4]]}}
    )
    budget, merged, merged_curves = acc.merge_records([first, second])
    assert budget == "bench" and acc.recorded_seeds(merged) == [0, 1]
    assert merged["baseline"][1]["mAP"] == pytest.approx(0.12)  # seeds back to int keys
    assert merged["lidar_teacher"] == {0: _metrics(0.6), 1: _metrics(0.5)}  # b replaced seed 0
    assert set(merged_curves) == {"baseline", "labeldistill", "lidar_only"}
    lines = acc.tables(merged, budget, [0, 1]).splitlines()
    # the ablation minus the baseline of its one seed: 0.3 - 0.1
    assert any(ln.startswith("| LiDAR teacher only | 0.2000 (one seed) |") for ln in lines)
    png = acc.plot_curves(merged_curves, tmp_path / "merged.png")
    assert png is not None and png.is_file()
    # a record with a row of no teacher's table, of another budget, or not JSON: one clear line
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SystemExit, match=r"bad\.json is not an accuracy\.json record"):
        acc.merge_records([tmp_path / "bad.json"])
    other = acc.write_record(tmp_path / "c.json", "tiny", abl, {})
    with pytest.raises(SystemExit, match="is of budget tiny, the others of bench"):
        acc.merge_records([first, other])
    weird = acc.write_record(tmp_path / "d.json", "bench", {"both": {0: _metrics(0.1)}}, {})
    with pytest.raises(SystemExit, match="unknown row 'both'"):
        acc.merge_records([weird])


def test_recorded_main_comparison_is_the_documented_one(acc) -> None:
    """benchmarks/recorded/: the file of the 3-seed main comparison holds the figures that
    RESULTS.md and the README quote (means and the paired difference)."""
    path = REPO / "benchmarks" / "recorded" / "accuracy_bench_main_2026-12-04.json"
    _budget, per, curves = acc.merge_records([path])
    assert acc.recorded_seeds(per) == [0, 1, 2]
    lines = acc.tables(per, "bench", [0, 1, 2]).splitlines()
    assert any(ln.startswith("| baseline BEVDepth | 0.0550 ± 0.0098 |") for ln in lines)
    assert any(ln.startswith("| LabelDistill | 0.0477 ± 0.0045 |") for ln in lines)
    assert any(ln.startswith("| LabelDistill | -0.0074 ± 0.0055 |") for ln in lines)
    assert {len(c) for row in curves.values() for c in row.values()} == {8}


def test_band_class_tables_with_object_counts(acc) -> None:
    def metrics(car: float, bus: float) -> dict:
        m = _metrics(0.1)
        m["ap_by_distance_per_class"] = {
            "0-20": {"car": car, "bus": None},
            "20-30": {"car": car / 2, "bus": bus},
            ">30": {"car": None, "bus": None},
        }
        m["num_gt_by_distance_per_class"] = {"0-20": {"car": 10}, "20-30": {"car": 6, "bus": 5}}
        m["num_objects_by_distance_per_class"] = {"0-20": {"car": 3}, "20-30": {"car": 2, "bus": 1}}
        return m

    per = {k: {} for k in acc.ROWS}
    per["baseline"] = {0: metrics(0.4, 0.3), 1: metrics(0.2, 0.1)}
    per["labeldistill"] = {0: metrics(0.6, 0.0)}
    lines = acc.band_class_tables(per, [0, 1])
    # a class without GT in a band (AP None) gets no column; >30 m has none at all
    assert "| model | car (10 / 3) |" in lines
    assert "| model | car (6 / 2) | bus (5 / 1) |" in lines
    assert ">30 m:" not in lines
    # mean over the seeds of a row
    assert "| baseline BEVDepth | 0.300 |" in lines
    assert "| baseline BEVDepth | 0.150 | 0.200 |" in lines
    assert "| LabelDistill | 0.300 | 0.000 |" in lines
    # records without per-class bands: no table
    assert acc.band_class_tables({k: {0: _metrics(0.1)} for k in acc.ROWS}, [0]) == []
