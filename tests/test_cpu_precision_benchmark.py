"""benchmarks/bench_cpu_precision.py: the four settings share weights and batch, and their
losses agree (NHWC exactly, bf16 within its rounding)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_cpu_precision", REPO / "benchmarks" / "bench_cpu_precision.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["bench_cpu_precision"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_settings_share_weights_and_agree(bench, synthetic_root: Path) -> None:
    overrides = [
        f"data.dataroot={synthetic_root}",
        "data.train_split=mini_val",
        "data.image_size=[64, 192]",
        *bench.BENCH_CAMERA,
    ]
    rows = bench.measure("bevdepth_tiny", overrides, repeats=1)
    assert list(rows) == ["fp32", "fp32_nhwc", "bf16", "bf16_nhwc"]
    assert rows["fp32"]["speedup"] == 1.0 and rows["fp32"]["loss_rel"] == 0.0
    assert abs(rows["fp32_nhwc"]["loss_rel"]) < 1e-5  # same math, another memory layout
    for name in ("bf16", "bf16_nhwc"):
        assert 0.0 < abs(rows[name]["loss_rel"]) < 0.05  # bf16 rounds, a little
    assert all(r["step_s"] > 0 for r in rows.values())
