"""onnxruntime vs PyTorch CPU inference of the camera student (issue 6).

    .venv/bin/python benchmarks/bench_onnx.py [--config bevdepth_tiny] [--repeats 5]
        [--threads 2] [--dataroot DIR --version v1.0-mini --split mini_val] [--set K=V ...]

Builds the config's student (random init, ImageNet download off), exports it with
``labeldistill.export.onnx.export_onnx`` for batch 1, then times, median of
``--repeats`` runs after one warm-up each: the PyTorch student forward (``torch.no_grad``, eval)
and the onnxruntime session (CPU provider), both with ``--threads`` intra-op threads. Also
prints the largest absolute difference of the raw head outputs (the agreement check of the
issue: <= 1e-4). Inputs: one sample of ``--split`` of ``--dataroot`` when given (real matrices
and images through the dataset), else plausible synthetic inputs. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from labeldistill.config import load_config
from labeldistill.export.onnx import BRANCHES, OnnxStudent, example_inputs, export_onnx
from labeldistill.models import build


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="bevdepth_tiny")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dataroot", default=None)
    ap.add_argument("--version", default="v1.0-mini")
    ap.add_argument("--split", default="mini_val")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    overrides = ["student.image_backbone.pretrained=false", *args.overrides]
    if args.dataroot:
        overrides += [
            f"data.dataroot={args.dataroot}",
            f"data.version={args.version}",
            f"data.val_split={args.split}",
        ]
    cfg = load_config(args.config, overrides)
    student = build.build_student(cfg).eval()
    if args.dataroot:
        from labeldistill.data.dataset import build_dataset, collate

        batch = collate([build_dataset(cfg.data, cfg.data.val_split, train=False)[0]])
        inputs = (batch.imgs, batch.ego_from_camera, batch.intrinsics, batch.ida, batch.bda)
        source = f"sample 0 of {args.split} in {args.dataroot}"
    else:
        inputs = example_inputs(cfg)
        source = "synthetic inputs (example_inputs)"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "student.onnx"
        t0 = time.perf_counter()
        export_onnx(student, path, inputs)
        export_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 2**20
        runner = OnnxStudent(path, threads=args.threads)

        def run_torch():
            with torch.no_grad():
                return student(*inputs)

        torch_ms = _median_ms(run_torch, args.repeats)
        ort_ms = _median_ms(lambda: runner.run(*inputs), args.repeats)
        ref = run_torch().head
        got = runner.run(*inputs)
    diff = max(
        float((getattr(a, b) - getattr(r, b)).abs().max())
        for a, r in zip(got.tasks, ref.tasks)
        for b in BRANCHES
    )
    print(
        f"config {cfg.name}: F = {cfg.num_frames}, input {list(inputs[0].shape)}, {source}; "
        f"threads {args.threads}, median of {args.repeats}; export {export_s:.1f} s, "
        f"ONNX file {size_mb:.1f} MB"
    )
    print()
    print("| runtime | ms / sample | ratio |")
    print("|---|---:|---:|")
    print(f"| PyTorch (eval, no_grad) | {torch_ms:.1f} | 1.00 |")
    ratio = torch_ms / ort_ms
    verdict = f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
    print(f"| onnxruntime CPU | {ort_ms:.1f} | {verdict} |")
    print()
    print(f"max |ONNX - PyTorch| over all raw head outputs: {diff:.2e}")


if __name__ == "__main__":
    main()
