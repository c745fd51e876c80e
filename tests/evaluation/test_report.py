"""The printable metrics table."""

from __future__ import annotations

from labeldistill.evaluation.report import format_metrics
from labeldistill.structures import CLASSES

VERSION = "v1.0-mini"
SPLIT = "mini_val"


def test_format_metrics_table() -> None:
    metrics = {
        "version": VERSION,
        "split": SPLIT,
        "mAP": 0.4123,
        "NDS": 0.5234,
        "mATE": 0.6,
        "mASE": 0.25,
        "mAOE": 0.44,
        "mAVE": 0.36,
        "mAAE": 0.21,
        "per_class_AP": {c: i / 10 for i, c in enumerate(CLASSES)},
        "ap_by_distance": {"0-20": 0.61, "20-30": 0.35, ">30": None},
        "num_gt_by_distance": {"0-20": 12, "20-30": 7, ">30": 0},
    }
    lines = format_metrics(metrics).splitlines()
    assert "mAP                   0.4123" in lines
    assert "NDS                   0.5234" in lines
    assert "mAAE                  0.2100" in lines
    assert any(ln.split() == ["bicycle", "0.7000"] for ln in lines)
    assert any(ln.split() == ["20-30", "0.3500", "7"] for ln in lines)
    assert any(ln.split() == [">30", "-", "0"] for ln in lines)


def test_format_metrics_shows_distinct_objects_when_known() -> None:
    metrics = {
        "mAP": 0.1,
        "NDS": 0.2,
        **{k: 0.5 for k in ("mATE", "mASE", "mAOE", "mAVE", "mAAE")},
        "per_class_AP": {c: 0.0 for c in CLASSES},
        "ap_by_distance": {"0-20": 0.61, "20-30": 0.35, ">30": None},
        "num_gt_by_distance": {"0-20": 12, "20-30": 7, ">30": 0},
        "num_objects_by_distance": {"0-20": 4, "20-30": 2, ">30": 0},
    }
    lines = format_metrics(metrics).splitlines()
    assert any(
        ln.split() == ["distance", "band", "(m)", "mAP", "GT", "boxes", "objects"] for ln in lines
    )
    assert any(ln.split() == ["20-30", "0.3500", "7", "2"] for ln in lines)
