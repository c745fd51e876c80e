"""Accuracy benchmark of LabelDistill on a synthetic nuScenes-format set (issue 10).

Official nuScenes metrics (devkit) on the val split of a set the script generates itself
(``recipes.budgets.BENCH_DATA``: a v1.0-trainval tree of 32 official train / 8 official val
scene names, 12 key samples each, with the per-pixel class maps of stage 0) for: the LiDAR
teacher, the label-encoder decode (upper bound), the baseline BEVDepth, the ablations
(LiDAR-only, label-only, no partitioning) and LabelDistill. Per row: mean, sample std and every
per-seed value of mAP, NDS and the five TP errors; mAP by distance band (0-20, 20-30, >30 m) for
every camera row; the LabelDistill - baseline difference paired by seed. Learning curves (val
mAP / NDS against training steps, baseline vs LabelDistill) go to ``<out>/learning_curves.png``
and ``<out>/learning_curves.json``; the tables to ``<out>/accuracy.md``.

Budget: ``recipes.budgets.BUDGETS[--budget]`` (default ``bench``: stage 0, teachers, camera
students of the same length, all CPU-sized). Stage 0 and the two teachers are trained once
(``--teacher-seed``) and shared by every student seed, so the spread is the students' own.

Main comparison:  .venv/bin/python benchmarks/accuracy.py
Ablations:        .venv/bin/python benchmarks/accuracy.py --ablations --no-main
Extra row:        .venv/bin/python benchmarks/accuracy.py --variant lidar_s0_detached --no-main
One row, more seeds: .venv/bin/python benchmarks/accuracy.py --seeds 1 2 --no-main
                  --variant label_only --no-baseline (paired with a recorded baseline: the
                  baseline is deterministic, the same seed retrained gives the same figures)
Another set:      .venv/bin/python benchmarks/accuracy.py --data-seed 1 --samples-per-scene 16
Recorded runs:    .venv/bin/python benchmarks/accuracy.py --recorded A.json B.json --out DIR

Every run also writes ``<out>/<budget>-data<seed>-sps<n>/accuracy.json`` (per-seed metrics and
learning curves); ``--recorded`` merges such files (later files add rows and seeds) into one
set of tables and one picture without training anything: the runs of several sessions, or the
files kept in ``benchmarks/recorded/``.

Every finished stage is reused (the table is assembled from what is on disk): an interrupted
run is resumed by running the same command again (a student cut off mid-run continues from its
last epoch). ``--jobs 2`` runs the teachers beside stage 0, then one process per (seed, camera
row), two at a time, one thread each (on 2 cores faster than one at a time with two threads).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from labeldistill.recipes.budgets import BUDGETS, VARIANTS
from labeldistill.recipes.demo import ensure_synthetic
from labeldistill.recipes.pipeline import ROW_NAMES, PipelineResult, run_pipeline

ROWS = (
    "lidar_teacher",
    "label_encoder",
    "baseline",
    "lidar_only",
    "label_only",
    "no_partition",
    "labeldistill",
    "lidar_s0_detached",
    "level0_detached",
)
CAMERA_ROWS = ROWS[2:]
TP = ("mATE", "mASE", "mAOE", "mAVE", "mAAE")
BANDS = ("0-20", "20-30", ">30")
ABLATIONS = ("lidar_only", "label_only", "no_partition")
#: The shared stages as the two parallel tasks of ``--jobs``: stage 1 then 2, and stage 0.
SHARED_TASKS = ("teachers", "backbone")


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.4f} (one seed)"  # no spread to show: not ± 0
    return f"{mean:.4f} ± {statistics.stdev(values):.4f}"


def _per_seed(values: list[float]) -> str:
    return " / ".join(f"{v:.4f}" for v in values)


def collect(results: dict[int, PipelineResult]) -> dict[str, dict[int, dict[str, Any]]]:
    """row key -> seed -> metrics."""
    out: dict[str, dict[int, dict[str, Any]]] = {k: {} for k in ROWS}
    for seed, res in results.items():
        for row in res.rows:
            if row.key in out:
                out[row.key][seed] = row.metrics
    return out


def tables(per: dict[str, dict[int, dict[str, Any]]], budget: str, seeds: list[int]) -> str:
    """The markdown tables of the benchmark (see the module docstring)."""
    lines = [
        f"Budget `{budget}`, student seeds {seeds}: mean ± sample std over seeds, then the "
        "per-seed values (seed order as listed). Stage 0 and the teachers are shared.",
        "",
        "| model | mAP | NDS | " + " | ".join(TP) + " | runs |",
        "|---|---|---|" + "---|" * len(TP) + "---|",
    ]
    for key in ROWS:
        ms = [per[key][s] for s in seeds if s in per[key]]
        if not ms:
            continue
        cells = [_mean_std([m["mAP"] for m in ms]), _mean_std([m["NDS"] for m in ms])]
        cells += [_mean_std([m[t] for m in ms if m.get(t) is not None]) for t in TP]
        lines.append(f"| {ROW_NAMES[key]} | " + " | ".join(cells) + f" | {len(ms)} |")
    lines += ["", "Per seed (mAP; NDS):", "", "| model | mAP per seed | NDS per seed |"]
    lines.append("|---|---|---|")
    for key in CAMERA_ROWS:
        ms = [per[key][s] for s in seeds if s in per[key]]
        if ms:
            lines.append(
                f"| {ROW_NAMES[key]} | {_per_seed([m['mAP'] for m in ms])} | "
                f"{_per_seed([m['NDS'] for m in ms])} |"
            )
    lines += ["", "mAP by distance band (ego distance, m):", ""]
    lines.append("| model | " + " | ".join(BANDS) + " |")
    lines.append("|---|" + "---|" * len(BANDS))
    for key in CAMERA_ROWS:
        ms = [per[key][s] for s in seeds if s in per[key]]
        if not ms:
            continue
        cells = []
        for band in BANDS:
            vals = [m.get("ap_by_distance", {}).get(band) for m in ms]
            cells.append(_mean_std([v for v in vals if v is not None]))
        lines.append(f"| {ROW_NAMES[key]} | " + " | ".join(cells) + " |")
    lines += band_class_tables(per, seeds)
    paired = [s for s in seeds if s in per["baseline"]]
    lines += ["", "Difference to the baseline, paired by seed (mean ± std of the differences):", ""]
    lines.append("| model | ΔmAP | ΔNDS | ΔmAP >30 m |")
    lines.append("|---|---|---|---|")
    for key in CAMERA_ROWS[1:]:
        both = [s for s in paired if s in per[key]]
        if not both:
            continue

        def diff(get: Any, both: list[int] = both, key: str = key) -> str:
            vals = [get(per[key][s]) - get(per["baseline"][s]) for s in both]
            return _mean_std(vals)

        far = lambda m: m.get("ap_by_distance", {}).get(">30") or 0.0  # noqa: E731
        lines.append(
            f"| {ROW_NAMES[key]} | {diff(lambda m: m['mAP'])} | {diff(lambda m: m['NDS'])} | "
            f"{diff(far)} |"
        )
    return "\n".join(lines)


def band_class_tables(per: dict[str, dict[int, dict[str, Any]]], seeds: list[int]) -> list[str]:
    """mAP by distance band and class for the camera rows (mean over seeds), each class headed
    by its val GT boxes / distinct objects in the band: a band's mAP averages its classes
    equally, and a class seen as a few objects over many consecutive samples moves it by
    chance. Empty when the metrics carry no per-class bands (records of older runs)."""
    runs = [per[k][s] for k in CAMERA_ROWS for s in seeds if s in per[k]]
    runs = [m for m in runs if m.get("ap_by_distance_per_class")]
    if not runs:
        return []
    counts = runs[0].get("num_gt_by_distance_per_class") or {}
    objects = runs[0].get("num_objects_by_distance_per_class") or {}
    lines = [
        "",
        "mAP by distance band and class (mean over seeds; header: val GT boxes / objects):",
    ]
    for band in BANDS:
        classes = [c for c, v in runs[0]["ap_by_distance_per_class"].get(band, {}).items()]
        classes = [c for c in classes if runs[0]["ap_by_distance_per_class"][band][c] is not None]
        if not classes:
            continue

        def head(c: str, band: str = band) -> str:
            n, o = counts.get(band, {}).get(c), objects.get(band, {}).get(c)
            return f"{c} ({n} / {o})" if n is not None and o is not None else c

        lines += ["", f"{band} m:", "", "| model | " + " | ".join(head(c) for c in classes) + " |"]
        lines.append("|---|" + "---|" * len(classes))
        for key in CAMERA_ROWS:
            ms = [per[key][s] for s in seeds if s in per[key]]
            ms = [m for m in ms if m.get("ap_by_distance_per_class")]
            if not ms:
                continue
            cells = []
            for c in classes:
                vals = [m["ap_by_distance_per_class"].get(band, {}).get(c) for m in ms]
                vals = [v for v in vals if v is not None]
                cells.append(f"{statistics.fmean(vals):.3f}" if vals else "-")
            lines.append(f"| {ROW_NAMES[key]} | " + " | ".join(cells) + " |")
    return lines


def learning_curves(results: dict[int, PipelineResult]) -> dict[str, dict[int, list[list[float]]]]:
    """row key -> seed -> [[step, mAP, NDS], ...] from the in-training validations
    (``eval/val_epoch_<n>``) and the final evaluation (``eval/last``) of each camera run."""
    curves: dict[str, dict[int, list[list[float]]]] = {}
    for seed, res in results.items():
        for row in res.rows:
            if row.key not in CAMERA_ROWS or row.eval_dir is None:
                continue
            run = row.eval_dir.parent.parent
            points: list[list[float]] = []
            for d in run.glob("eval/val_epoch_*"):
                m_file = d / "metrics.json"
                m = json.loads(m_file.read_text()) if m_file.is_file() else {}
                if "global_step" in m:
                    points.append([m["global_step"], m["mAP"], m["NDS"]])
            cfg_file = run / "config.yaml"
            final = (
                yaml.safe_load(cfg_file.read_text())["trainer"]["max_steps"]
                if cfg_file.is_file()
                else -1
            )
            points = [p for p in points if p[0] != final]
            points.append([final, row.metrics["mAP"], row.metrics["NDS"]])
            curves.setdefault(row.key, {})[seed] = sorted(points)
    return curves


#: Colours of the learning-curve picture, one per camera row.
COLORS = {
    "baseline": "tab:blue",
    "labeldistill": "tab:red",
    "lidar_only": "tab:orange",
    "label_only": "tab:green",
    "no_partition": "tab:purple",
    "lidar_s0_detached": "tab:brown",
    "level0_detached": "tab:pink",
}


def plot_curves(curves: dict[str, dict[int, list[list[Any]]]], path: Path) -> Path | None:
    """PNG: val mAP and NDS against steps for every camera row in ``curves`` (thin lines: seeds;
    thick: their mean at the steps every seed has a value for). A value may be ``None`` (not
    recorded): it is left out of its seed's line and of the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in CAMERA_ROWS if curves.get(k)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for ax, idx, label in ((axes[0], 1, "val mAP"), (axes[1], 2, "val NDS")):
        for key in keys:
            per_seed = [
                {p[0]: p[idx] for p in pts if p[idx] is not None} for pts in curves[key].values()
            ]
            for pts in per_seed:
                steps = sorted(pts)
                ax.plot(steps, [pts[s] for s in steps], color=COLORS[key], alpha=0.3, marker=".")
            common = sorted(set.intersection(*[set(pts) for pts in per_seed]))
            mean = [statistics.fmean(pts[s] for pts in per_seed) for s in common]
            n = len(per_seed)
            ax.plot(
                common,
                mean,
                color=COLORS[key],
                lw=2.5,
                marker="o",
                label=f"{ROW_NAMES[key]} ({n} seed{'s' if n > 1 else ''})",
            )
        ax.set_xlabel("training steps (batch 2)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Synthetic benchmark, val split (thin: seeds, thick: mean over seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_record(path: Path, budget: str, per: dict, curves: dict, **info: Any) -> Path:
    """``accuracy.json``: the per-seed metrics (row -> seed -> metrics) and learning curves
    (row -> seed -> [[step, mAP, NDS], ...]) of a run, with ``info`` (command, date, ...)."""
    per = {k: v for k, v in per.items() if v}
    record = {"budget": budget, "info": info, "metrics": per, "curves": curves}
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def merge_records(paths: Sequence[Path]) -> tuple[str, dict, dict]:
    """(budget, metrics, curves) of several ``accuracy.json`` files, seeds as ints; a later file
    adds rows and seeds and replaces the (row, seed) entries it has too. Files of different
    budgets do not merge."""
    budget = ""
    per: dict[str, dict[int, dict[str, Any]]] = {k: {} for k in ROWS}
    curves: dict[str, dict[int, list[list[Any]]]] = {}
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
            this = record["budget"]
            metrics, its_curves = record["metrics"], record["curves"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SystemExit(f"error: {path} is not an accuracy.json record ({err})") from None
        if budget and this != budget:
            raise SystemExit(f"error: {path} is of budget {this}, the others of {budget}")
        budget = this
        for key, seeds in metrics.items():
            if key not in per:
                raise SystemExit(f"error: {path}: unknown row '{key}' (rows: {', '.join(ROWS)})")
            per[key].update({int(s): m for s, m in seeds.items()})
        for key, seeds in its_curves.items():
            curves.setdefault(key, {}).update({int(s): pts for s, pts in seeds.items()})
    return budget, per, curves


def recorded_seeds(per: dict[str, dict[int, Any]]) -> list[int]:
    """Every student seed of a merged record (the camera rows' seeds, sorted)."""
    return sorted({s for key in CAMERA_ROWS for s in per.get(key, {})})


def parallel_tasks(
    seeds: Sequence[int], variants: Sequence[str], baseline: bool = True
) -> list[tuple[int, str]]:
    """The (seed, camera row) processes of ``--jobs``, in launch order: seed by seed, the
    distilled rows (longer steps: teacher forwards) before the baseline (if ``baseline``)."""
    rows = (*variants, "baseline") if baseline else tuple(variants)
    return [(s, key) for s in seeds for key in rows]


def row_keys(main: bool, ablations: bool, extra: Sequence[str]) -> list[str]:
    """The distilled rows of a call, in table order and each once: LabelDistill (``main``),
    the three ablations (``ablations``) and the ``--variant`` rows."""
    keys = (["labeldistill"] if main else []) + (list(ABLATIONS) if ablations else [])
    return keys + [k for k in dict.fromkeys(extra) if k not in keys]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/_work/accuracy")
    p.add_argument("--dataroot", default=None, help="default: <out>/data-<seed>-<sps> (generated)")
    p.add_argument("--budget", default="bench", choices=sorted(BUDGETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="student seeds")
    p.add_argument("--teacher-seed", type=int, default=0, help="stage 0 and teachers")
    p.add_argument("--data-seed", type=int, default=None, help="seed of the generated set")
    p.add_argument("--samples-per-scene", type=int, default=None, help="of the generated set")
    p.add_argument(
        "--ablations", action="store_true", help="also LiDAR-only, label-only, no-partition"
    )
    p.add_argument("--no-main", action="store_true", help="with --ablations: only the ablations")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        choices=[v for v in VARIANTS if v != "labeldistill"],
        help="an extra distilled row (repeatable): an ablation alone, lidar_s0_detached, "
        "level0_detached",
    )
    p.add_argument(
        "--no-baseline",
        action="store_true",
        help="do not train the baseline (pair the rows with a recorded baseline of the same "
        "seeds: it is deterministic)",
    )
    p.add_argument("--jobs", type=int, default=1, help="seeds trained in parallel processes")
    p.add_argument(
        "--shared-only",
        action="store_true",
        help="train the shared stages (teachers, stage 0) only",
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)  # one task of --jobs
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers of every stage")
    p.add_argument(
        "--recorded",
        nargs="+",
        type=Path,
        default=None,
        metavar="JSON",
        help="train nothing: the tables and picture of these accuracy.json files, into --out",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.recorded is not None:
        budget_name, per, curves = merge_records(args.recorded)
        text = tables(per, budget_name, recorded_seeds(per))
        png = plot_curves(curves, Path(args.out) / "learning_curves.png")
        text += f"\n\nFrom: {', '.join(str(f) for f in args.recorded)}"
        text += f"\nLearning curves: {png}" if png is not None else ""
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "accuracy.md").write_text(text + "\n")
        print(text)
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    budget = BUDGETS[args.budget]
    plan = budget.data
    if plan is None:
        raise SystemExit(f"error: budget {args.budget} has no synthetic set (use a CPU budget)")
    data_seed = plan.data_seed if args.data_seed is None else args.data_seed
    sps = plan.samples_per_scene if args.samples_per_scene is None else args.samples_per_scene
    out = Path(args.out)
    start = time.time()
    data = (
        Path(args.dataroot)
        if args.dataroot
        else ensure_synthetic(out / f"data-{data_seed}-{sps}", plan, data_seed, sps)
    )
    variants = row_keys(not args.no_main, args.ablations, args.variant)
    extra = [f"data.num_workers={args.workers}"] if args.workers is not None else []
    set_dir = out / f"{args.budget}-data{data_seed}-sps{sps}"

    def pipeline_of(seed: int, **kw: Any) -> PipelineResult:
        return run_pipeline(
            data,
            set_dir / f"seed{seed}",
            budget=args.budget,
            seed=seed,
            teacher_dir=set_dir / "teachers",
            teacher_seed=args.teacher_seed,
            extra=extra,
            **kw,
        )

    if args.only is not None:
        # one task of the parallel mode below: the teachers, stage 0, or a (seed, row)
        if args.only in SHARED_TASKS:
            pipeline_of(
                args.seeds[0],
                variants=(),
                baseline=False,
                backbone=args.only == "backbone",
                teachers=args.only == "teachers",
            )
            return 0
        rows = () if args.only == "baseline" else (args.only,)
        pipeline_of(args.seeds[0], variants=rows, baseline=args.only == "baseline")
        return 0
    threads = max(1, (os.cpu_count() or 1) // args.jobs)

    def in_parallel(tasks: list[tuple[int, str]]) -> None:
        """Run ``tasks`` (seed, --only key) as ``--jobs`` child processes of ``threads``
        threads each, logs in ``<out>/seed{S}-{key}.log``; the first failure stops the run."""
        pending = list(tasks)
        running: list[subprocess.Popen] = []
        while pending or running:
            while pending and len(running) < args.jobs:
                seed, key = pending.pop(0)
                cmd = [sys.executable, __file__, "--out", str(out), "--dataroot", str(data)]
                cmd += ["--budget", args.budget, "--seeds", str(seed), "--threads", str(threads)]
                cmd += ["--teacher-seed", str(args.teacher_seed), "--only", key]
                cmd += ["--data-seed", str(data_seed), "--samples-per-scene", str(sps)]
                cmd += ["--workers", str(args.workers)] if args.workers is not None else []
                log_file = (out / f"seed{seed}-{key}.log").open("w")
                env = dict(os.environ, OMP_NUM_THREADS=str(threads))
                running.append(
                    subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
                )
            time.sleep(5)
            for proc in [r for r in running if r.poll() is not None]:
                running.remove(proc)
                if proc.returncode != 0:
                    raise SystemExit(f"error: {' '.join(proc.args)} failed (see {out}/seed*.log)")

    if args.jobs > 1:
        # the shared stages first: the teachers (stage 2 needs stage 1) beside stage 0
        in_parallel([(args.teacher_seed, key) for key in SHARED_TASKS])
    if args.shared_only:
        res = pipeline_of(args.seeds[0], variants=(), baseline=False, backbone=True)
        for row in res.rows:
            print(
                f"{ROW_NAMES[row.key]}: mAP {row.metrics['mAP']:.4f} NDS {row.metrics['NDS']:.4f}"
            )
        return 0
    if args.jobs > 1:
        # then one process per (seed, camera row), the longer distilled rows of a seed before
        # its baseline, so that the lanes stay full and a cut-off run still holds complete
        # seed pairs
        in_parallel(parallel_tasks(args.seeds, variants, baseline=not args.no_baseline))
    results: dict[int, PipelineResult] = {}
    for seed in args.seeds:
        results[seed] = pipeline_of(seed, variants=variants, baseline=not args.no_baseline)
        text = tables(collect(results), args.budget, sorted(results))
        (set_dir / "accuracy.md").write_text(text + "\n")
    per = collect(results)
    text = tables(per, args.budget, args.seeds)
    first = results[args.seeds[0]]
    if first.backbone is not None:
        val = first.backbone.metrics.get("val", {})
        text += (
            f"\n\nStage 0 (shared): val mIoU over object classes {val.get('mIoU_objects', 0):.4f}"
            f" on {val.get('images', 0)} images, {first.backbone.metrics['train_seconds'] / 60:.1f}"
            " min."
        )
    curves = learning_curves(results)
    (set_dir / "learning_curves.json").write_text(json.dumps(curves, indent=1))
    write_record(
        set_dir / "accuracy.json",
        args.budget,
        per,
        curves,
        command=" ".join(sys.argv),
        date=time.strftime("%Y-%m-%d", time.gmtime()),
        data_seed=data_seed,
        samples_per_scene=sps,
        teacher_seed=args.teacher_seed,
    )
    png = plot_curves(curves, set_dir / "learning_curves.png")
    minutes = (time.time() - start) / 60
    text += (
        f"\n\nWall time of this call: {minutes:.1f} min (stages reused from earlier runs count 0)."
    )
    if png is not None:
        text += f"\nLearning curves: {png}"
    (set_dir / "accuracy.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
