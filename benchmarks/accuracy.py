"""Accuracy benchmark of LabelDistill on the synthetic set (issue 5).

Official nuScenes mAP / NDS (mini_val of the synthetic v1.0-mini set) of: the LiDAR teacher,
the label-encoder decode (upper bound), the baseline BEVDepth, LiDAR-only, label-only and
LabelDistill, as mean and spread over several seeds, plus mAP by distance band for the
baseline vs LabelDistill. Writes a markdown table (``<out>/accuracy.md``) and prints it.

Fixed budget: ``labeldistill.training.pipeline.BUDGETS[--budget]`` (default ``bench``); the
synthetic set is generated with seed 0, 10 samples per scene, 352 x 198 cameras. By default the
two teacher stages are trained once (seed 0, ``--teacher-seed``) and shared by every student
seed, so the spread reflects the students' seeds only; ``--teachers-per-seed`` retrains them.

Full run:   .venv/bin/python benchmarks/accuracy.py --out benchmarks/_work/accuracy --jobs 2
Reduced:    .venv/bin/python benchmarks/accuracy.py --budget tiny --seeds 0 1

``--jobs N``: the shared teachers are trained first (all threads), then the seeds run in N
parallel processes of ``--threads`` = cores / N intra-op threads each (2 cores: one seed per
core); the table is assembled from the finished stages.
Finished stages are reused (delete the output dir or pass --fresh to retrain).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from labeldistill.training.pipeline import (
    ROW_NAMES,
    VARIANTS,
    PipelineResult,
    run_pipeline,
)

ROWS = ("lidar_teacher", "label_encoder", "baseline", "lidar_only", "label_only", "labeldistill")


def _ensure_data(root: Path) -> Path:
    from labeldistill.data.infos import info_path
    from labeldistill.data.prepare import prepare
    from labeldistill.data.synthetic import SynthConfig, generate

    if not info_path(root, "mini_val").is_file():
        cfg = SynthConfig(seed=0, samples_per_scene=10, image_width=352, image_height=198)
        generate(root, cfg, overwrite=True)
        prepare(root, "v1.0-mini")
    return root


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {spread:.4f}"


def table(results: dict[int, PipelineResult], budget: str) -> str:
    seeds = sorted(results)
    per_key: dict[str, list[dict]] = {k: [] for k in ROWS}
    for s in seeds:
        for row in results[s].rows:
            if row.key in per_key:
                per_key[row.key].append(row.metrics)
    lines = [
        f"Budget `{budget}`, seeds {seeds} (mean ± sample std over seeds; teachers shared "
        "unless stated).",
        "",
        "| model | mAP | NDS | mATE | mAOE | runs |",
        "|---|---|---|---|---|---|",
    ]
    for key in ROWS:
        ms = per_key[key]
        if not ms:
            continue
        lines.append(
            f"| {ROW_NAMES[key]} | {_mean_spread([m['mAP'] for m in ms])} | "
            f"{_mean_spread([m['NDS'] for m in ms])} | "
            f"{_mean_spread([m['mATE'] for m in ms])} | "
            f"{_mean_spread([m['mAOE'] for m in ms])} | {len(ms)} |"
        )
    bands: list[str] = []
    for key in ("baseline", "labeldistill"):
        for m in per_key[key]:
            for b in m.get("ap_by_distance") or {}:
                if b not in bands:
                    bands.append(b)
    if bands:
        lines += ["", "mAP by distance band (ego distance, m):", ""]
        lines.append("| model | " + " | ".join(bands) + " |")
        lines.append("|---|" + "---|" * len(bands))
        for key in ("baseline", "labeldistill"):
            ms = per_key[key]
            if not ms:
                continue
            cells = [
                _mean_spread(
                    [m["ap_by_distance"][b] for m in ms if m["ap_by_distance"].get(b) is not None]
                )
                for b in bands
            ]
            lines.append(f"| {ROW_NAMES[key]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/_work/accuracy")
    p.add_argument("--dataroot", default=None, help="default: <out>/data (generated)")
    p.add_argument("--budget", default="bench")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--teacher-seed", type=int, default=0)
    p.add_argument("--teachers-per-seed", action="store_true")
    p.add_argument(
        "--variants",
        nargs="+",
        default=["lidar_only", "label_only", "labeldistill"],
        choices=VARIANTS,
    )
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--jobs", type=int, default=1, help="seeds trained in parallel processes")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    data = Path(args.dataroot) if args.dataroot else _ensure_data(out / "data")
    start = time.time()

    def pipeline_of(seed: int, fresh: bool, **kw: object) -> PipelineResult:
        return run_pipeline(
            data,
            out / f"seed{seed}",
            budget=args.budget,
            seed=seed,
            fresh=fresh,
            teacher_dir=None if args.teachers_per_seed else out / "teachers",
            teacher_seed=None if args.teachers_per_seed else args.teacher_seed,
            **kw,  # type: ignore[arg-type]
        )

    if args.jobs > 1 and len(args.seeds) > 1:
        if args.fresh:  # the children would retrain the shared teachers concurrently
            raise SystemExit(f"error: --fresh with --jobs > 1: delete {out} instead")
        if not args.teachers_per_seed:  # the shared teachers once, with every thread
            pipeline_of(args.seeds[0], args.fresh, variants=(), baseline=False)
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        pending = list(args.seeds)
        running: list[subprocess.Popen] = []
        while pending or running:
            while pending and len(running) < args.jobs:
                seed = pending.pop(0)
                cmd = [sys.executable, __file__, "--out", str(out), "--dataroot", str(data)]
                cmd += ["--budget", args.budget, "--seeds", str(seed), "--threads", str(threads)]
                cmd += ["--teacher-seed", str(args.teacher_seed), "--variants", *args.variants]
                cmd += ["--teachers-per-seed"] if args.teachers_per_seed else []
                log_file = (out / f"seed{seed}.log").open("w")
                running.append(subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT))
            time.sleep(5)
            for proc in [r for r in running if r.poll() is not None]:
                running.remove(proc)
                if proc.returncode != 0:
                    raise SystemExit(f"error: {' '.join(proc.args)} failed (see {out}/seed*.log)")
    results: dict[int, PipelineResult] = {}
    for seed in args.seeds:
        results[seed] = pipeline_of(seed, args.fresh, variants=args.variants)
        text = table(results, args.budget)
        (out / "accuracy.md").write_text(text + "\n")
    text = table(results, args.budget)
    minutes = (time.time() - start) / 60
    text += f"\n\nWall time: {minutes:.1f} min (stages reused from earlier runs count 0)."
    (out / "accuracy.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
