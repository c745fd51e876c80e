"""Voxel pooling: reference (materialised depth x context + index_add_) vs the fast path (sparse
S @ context), at the paper's shapes: B = 1, 6 cameras, 112 depth bins, 16 x 44 features,
C = 80 and 150, 128 x 128 grid. Geometry from a 6-camera ring (real nuScenes calibration when
the one-sample fixture is present), 256 x 704 input.

Each (implementation, C) runs in its own subprocess so that its peak resident memory
(``ru_maxrss`` growth over the inputs) is its own. Times are medians of ``--repeats`` runs after
one warm-up run.

    .venv/bin/python benchmarks/bench_voxel_pool.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "nuscenes_one_sample" / "infos.pkl"


def camera_rig() -> dict:
    """ego_from_camera, intrinsics, ida [1, 6, 4, 4] (1600x900 -> 704x256 resize + crop), source."""
    from labeldistill import geometry
    from labeldistill.structures import CAMERAS

    scale = 704 / 1600
    if FIXTURE.is_file():
        info = pickle.loads(FIXTURE.read_bytes())[0]
        e, k = [], []
        for cam in CAMERAS:
            calib = info["cam_infos"][cam]["calibrated_sensor"]
            e.append(geometry.pose_matrix(calib))
            k4 = np.eye(4)
            k4[:3, :3] = np.asarray(calib["camera_intrinsic"])
            k.append(k4)
        source = "real nuScenes rig (fixture)"
    else:
        e, k = [], []
        for i in range(6):
            yaw = 2 * np.pi * i / 6
            fwd = np.array([np.cos(yaw), np.sin(yaw), 0.0])
            right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
            rot = np.stack([right, [0.0, 0.0, -1.0], fwd], axis=1)
            e.append(geometry.transform(rot, [1.0, 0.0, 1.6]))
            k4 = np.eye(4)
            k4[0, 0] = k4[1, 1] = 1266.0
            k4[0, 2], k4[1, 2] = 800.0, 450.0
            k.append(k4)
        source = "synthetic 6-camera ring"
    ego = torch.tensor(np.stack(e), dtype=torch.float32).unsqueeze(0)
    intr = torch.tensor(np.stack(k), dtype=torch.float32).unsqueeze(0)
    ida = torch.eye(4).repeat(1, 6, 1, 1)
    ida[..., 0, 0] = ida[..., 1, 1] = scale
    ida[..., 1, 3] = -(900 * scale - 256)
    return {"ego": ego, "intrinsics": intr, "ida": ida, "source": source}


def worker(impl: str, channels: int, repeats: int, threads: int) -> dict:
    from labeldistill.config import GridConfig
    from labeldistill.models.view_transform import frustum_geometry, make_frustum
    from labeldistill.ops.voxel_pool import VoxelGrid, pool_fn

    torch.set_num_threads(threads)
    grid_cfg = GridConfig()
    grid = VoxelGrid.from_config(grid_cfg)
    rig = camera_rig()
    frustum = make_frustum((256, 704), 16, grid_cfg.d_bound)
    geom = frustum_geometry(
        frustum, rig["ego"], rig["intrinsics"], rig["ida"], torch.eye(4).view(1, 4, 4)
    )
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 6, 112, 16, 44, generator=gen)
    context = torch.randn(1, 6, channels, 16, 44, generator=gen)
    fn = pool_fn(impl)
    fwd, bwd = [], []
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(repeats + 1):
        depth = logits.softmax(2).requires_grad_(True)
        ctx = context.clone().requires_grad_(True)
        t0 = time.perf_counter()
        out = fn(geom, depth, ctx, grid)
        t1 = time.perf_counter()
        out.backward(torch.ones_like(out))
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
        del out, depth, ctx
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        inf = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(geom, logits.softmax(2), context, grid)
            inf.append(time.perf_counter() - t0)
    inside = ((geom - torch.tensor(grid.lower)) / torch.tensor(grid.cell)).int()
    valid = ((inside >= 0) & (inside < torch.tensor(grid.size))).all(-1).float().mean().item()
    return {
        "impl": impl,
        "C": channels,
        "fwd_ms": 1e3 * statistics.median(fwd[1:]),
        "bwd_ms": 1e3 * statistics.median(bwd[1:]),
        "nograd_fwd_ms": 1e3 * statistics.median(inf),
        "peak_mb": (peak - base) / 1024.0,
        "inside_fraction": valid,
        "rig": rig["source"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "C"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats, args.threads)))
        return
    rows = []
    for channels in (80, 150):
        for impl in ("reference", "fast"):
            cmd = [sys.executable, __file__, "--worker", impl, str(channels)]
            cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(
        f"geometry: {rows[0]['rig']}; "
        f"{100 * rows[0]['inside_fraction']:.1f} % of frustum points in the grid"
    )
    print(f"threads {args.threads}, median of {args.repeats} runs (after 1 warm-up)")
    print(
        "| C | impl | forward ms | backward ms | fwd+bwd ms | no-grad fwd ms | peak extra RSS MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        total = r["fwd_ms"] + r["bwd_ms"]
        print(
            f"| {r['C']} | {r['impl']} | {r['fwd_ms']:.1f} | {r['bwd_ms']:.1f} | {total:.1f} | "
            f"{r['nograd_fwd_ms']:.1f} | {r['peak_mb']:.0f} |"
        )
    for channels in (80, 150):
        ref = next(r for r in rows if r["C"] == channels and r["impl"] == "reference")
        fast = next(r for r in rows if r["C"] == channels and r["impl"] == "fast")
        speed = (ref["fwd_ms"] + ref["bwd_ms"]) / (fast["fwd_ms"] + fast["bwd_ms"])
        mem = ref["peak_mb"] / max(fast["peak_mb"], 1e-3)
        print(
            f"C={channels}: fast is {speed:.1f}x faster (fwd+bwd), "
            f"{mem:.1f}x less peak extra memory"
        )


if __name__ == "__main__":
    main()
