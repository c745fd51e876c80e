"""Printable tables of evaluation metrics (the dict of
:func:`labeldistill.evaluation.nuscenes_eval.evaluate_json`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from labeldistill.evaluation.nuscenes_eval import TP_NAMES


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """A printable table: mAP, NDS, the five TP errors, per-class AP, AP by distance band."""

    def fmt(v: Any) -> str:
        return "   -  " if v is None else f"{float(v):.4f}"

    lines = [
        f"nuScenes detection metrics ({metrics.get('version', '')} {metrics.get('split', '')})"
    ]
    lines.append(f"{'mAP':<22}{fmt(metrics['mAP'])}")
    lines.append(f"{'NDS':<22}{fmt(metrics['NDS'])}")
    for name in TP_NAMES.values():
        lines.append(f"{name:<22}{fmt(metrics[name])}")
    lines.append("")
    lines.append(f"{'class':<22}{'AP':>8}")
    for cls, ap in metrics["per_class_AP"].items():
        lines.append(f"{cls:<22}{fmt(ap):>8}")
    bands = metrics.get("ap_by_distance")
    if bands:
        counts = metrics.get("num_gt_by_distance", {})
        objects = metrics.get("num_objects_by_distance") or {}
        lines.append("")
        head = f"{'distance band (m)':<22}{'mAP':>8}{'GT boxes':>10}"
        lines.append(head + (f"{'objects':>9}" if objects else ""))
        for band, ap in bands.items():
            row = f"{band:<22}{fmt(ap):>8}{counts.get(band, 0):>10}"
            lines.append(row + (f"{objects.get(band, 0):>9}" if objects else ""))
    return "\n".join(lines)
