"""Time of ``labeldistill prepare`` per key sample on the demo-size synthetic set.

    .venv/bin/python benchmarks/bench_prepare.py [--repeats 3] [--samples-per-scene 10]

Generates the set once into ``benchmarks/_work/synth_demo`` (git-ignored; default ``synth``
sizes: 10 scenes x 10 samples, 704x396 images), then measures, median of ``--repeats`` runs:

* fresh in-process (workers=1): tables + infos + validation + depth GT for every sample;
* fresh in a 2-process pool (workers=2);
* a rerun with every depth file already done (validation + infos only);
* ``--no-depth`` (workers=1): tables + infos + validation;
* the reference: loading the tables and building the infos alone (no file access).

Prints a Markdown table (ms per sample and ratios to the fresh in-process run).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

WORK = Path(__file__).resolve().parent / "_work"


def _median_time(fn: Callable[[], object], setup: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples-per-scene", type=int, default=10)
    parser.add_argument("--out", type=Path, default=WORK / "synth_demo")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from labeldistill.data.infos import build_infos
    from labeldistill.data.nuscenes_reader import open_nuscenes, split_scenes
    from labeldistill.data.prepare import prepare
    from labeldistill.nuscenes_schema import INFO_SPLITS
    from labeldistill.synth.generate import SynthConfig, generate

    root: Path = args.out
    stamp = root / f".bench_{args.samples_per_scene}"
    if not stamp.exists():
        t0 = time.perf_counter()
        generate(root, SynthConfig(samples_per_scene=args.samples_per_scene), overwrite=True)
        stamp.touch()
        print(f"generated {root} in {time.perf_counter() - t0:.1f} s")
    version = "v1.0-mini"

    def clear_depth() -> None:
        shutil.rmtree(root / "depth_gt", ignore_errors=True)

    def tables_and_infos() -> int:
        nusc = open_nuscenes(root, version)
        return sum(len(build_infos(nusc, split_scenes(version, s))) for s in INFO_SPLITS[version])

    n = tables_and_infos()
    rows = {
        "fresh, workers=1": _median_time(
            lambda: prepare(root, version, workers=1), clear_depth, args.repeats
        ),
        "fresh, workers=2": _median_time(
            lambda: prepare(root, version, workers=2), clear_depth, args.repeats
        ),
        "rerun (all depth done), workers=1": _median_time(
            lambda: prepare(root, version, workers=1), lambda: None, args.repeats
        ),
        "no depth, workers=1": _median_time(
            lambda: prepare(root, version, workers=1, depth=False), lambda: None, args.repeats
        ),
        "reference: tables + infos only": _median_time(
            tables_and_infos, lambda: None, args.repeats
        ),
    }
    base = rows["fresh, workers=1"]
    print(f"\n{n} key samples ({args.samples_per_scene} per scene), median of {args.repeats}\n")
    print("| run | total s | ms / sample | ratio to fresh workers=1 |")
    print("|---|---|---|---|")
    for name, t in rows.items():
        print(f"| {name} | {t:.2f} | {1000 * t / n:.1f} | {t / base:.2f} |")


if __name__ == "__main__":
    main()
