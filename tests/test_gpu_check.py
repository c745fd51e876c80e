"""The CPU dry run of benchmarks/gpu_check.py (issue 13): the script's code paths (pooling
parity under autocast, a student and a teacher step with autocast + grad scaling + clipping,
the profile, the Lightning path with mixed precision, DDP, EMA, checkpoint and resume) run at
tiny shapes, so the GPU check cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_dry_run(synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny"]
    cmd += ["--threads", "1", "--dataroot", str(synthetic_root), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert set(checks) == {"pooling", "student_step", "teacher_step", "profile", "lightning"}
    assert all(c["ok"] for c in checks.values()), checks
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("PASS", "FAIL"))]
    assert len(lines) == 6 and all(ln.startswith("PASS") for ln in lines)
    pool = checks["pooling"]
    assert pool["fp32_max_rel_diff"] < 1e-4
    assert pool["float16_autocast_max_rel_diff"] < 1e-4
    assert pool["bfloat16_autocast_max_rel_diff"] < 1e-4
    assert checks["lightning"]["steps"] == [2, 3] and checks["lightning"]["ema_in_checkpoint"]
    assert 0 < checks["profile"]["inference"]["non_dense_conv_share"] < 1
