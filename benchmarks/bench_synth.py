"""Generation time of the synthetic nuScenes-format dataset (``labeldistill synth``).

    .venv/bin/python benchmarks/bench_synth.py [--repeats 3] [--demo-repeats 1]

Measures (wall clock, median of the repeats), into ``benchmarks/_work`` (git-ignored):

* the demo-size set: 10 scenes x 10 samples, default image size, all cores (process pool);
* with ``--serial``, the same set in one process (workers=1);
* the test-size set of ``tests/conftest.py``: 4 samples/scene, 352x198, workers=1;
* the per-sensor cost inside one scene process (CPU time): one 6-camera key frame at the
  default size and one LiDAR sweep, and their ratio.

Prints a Markdown table with wall time and CPU time (this process and its children): on a
shared, loaded machine the CPU time is the figure to compare.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

WORK = Path(__file__).resolve().parent / "_work"


def _median(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median (wall seconds, CPU seconds of this process and its children) of ``repeats``."""
    walls, cpus = [], []
    for _ in range(repeats):
        r0, c0 = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        r1, c1 = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        cpus.append(
            sum(
                getattr(r1, f) - getattr(r0, f) + getattr(c1, f) - getattr(c0, f)
                for f in ("ru_utime", "ru_stime")
            )
        )
    return statistics.median(walls), statistics.median(cpus)


def _sensor_costs(repeats: int) -> tuple[float, float]:
    """CPU seconds of one 6-camera key frame (default size) and one LiDAR sweep."""
    import numpy as np

    from labeldistill.synth import camera as C
    from labeldistill.synth import lidar as L
    from labeldistill.synth import world as W
    from labeldistill.synth.generate import SynthConfig

    cfg = SynthConfig()
    world = W.build_world(cfg.seed, 0, cfg.samples_per_scene)
    rigs = []
    for cam, (trans, yaw, pitch, _) in C.CAMERA_RIG.items():
        m = np.eye(4)
        m[:3, :3] = C.camera_rotation(yaw, pitch)
        m[:3, 3] = trans
        k = C.camera_intrinsic(
            cam, cfg.image_width, cfg.image_height, cfg.fov_front_deg, cfg.fov_back_deg
        )
        rigs.append((m, k))
    cams, scans = [], []
    for r in range(repeats + 1):
        t0 = time.process_time()
        for m, k in rigs:
            C.render_camera(
                world, 0.5 * r, m, k, cfg.image_width, cfg.image_height, np.random.default_rng(r)
            )
        t1 = time.process_time()
        L.scan_lidar(world, 0.5 * r, cfg.lidar_azimuth_steps, np.random.default_rng(r))
        t2 = time.process_time()
        if r:  # the first round warms caches
            cams.append(t1 - t0)
            scans.append(t2 - t1)
    return statistics.median(cams), statistics.median(scans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the small runs")
    parser.add_argument("--demo-repeats", type=int, default=1, help="repeats of the demo-size runs")
    parser.add_argument("--serial", action="store_true", help="also time the demo set in 1 process")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from labeldistill.synth.generate import SynthConfig, generate

    WORK.mkdir(parents=True, exist_ok=True)
    demo = SynthConfig()
    small = SynthConfig(seed=7, samples_per_scene=4, image_width=352, image_height=198)
    out = WORK / "bench_synth"

    def run(cfg: SynthConfig, workers: int | None) -> Callable[[], object]:
        return lambda: generate(out, cfg, workers=workers, overwrite=True)

    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    t_demo, c_demo = _median(run(demo, None), args.demo_repeats)
    rows = [
        (
            f"demo set, 10 scenes x {demo.samples_per_scene} samples, "
            f"{demo.image_width}x{demo.image_height}, workers={cores}",
            t_demo,
            c_demo,
        )
    ]
    if args.serial:
        rows.append(("demo set, workers=1", *_median(run(demo, 1), args.demo_repeats)))
    rows.append(
        (
            "test set (conftest), 10 x 4 samples, 352x198, workers=1",
            *_median(run(small, 1), args.repeats),
        )
    )
    cam, scan = _sensor_costs(args.repeats)
    shutil.rmtree(out, ignore_errors=True)

    size = f"{demo.image_width}x{demo.image_height}"
    print(f"load average at start: {load:.1f} on {cores} cores")
    print("| run | wall s | CPU s | CPU / demo CPU |\n|---|---|---|---|")
    for name, wall, cpu in rows:
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {cpu / c_demo:.2f} |")
    print("\n| sensor (CPU s, one process) | s | ratio |\n|---|---|---|")
    print(f"| 6 cameras, one key frame, {size} | {cam:.3f} | 1.00 |")
    print(
        f"| one LiDAR sweep, 32 x {demo.lidar_azimuth_steps} rays | {scan:.3f} | {scan / cam:.2f} |"
    )


if __name__ == "__main__":
    main()
