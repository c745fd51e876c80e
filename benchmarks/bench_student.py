"""The whole BEVDepth student's inference time as a ratio to its image backbone alone (ResNet +
image neck on the same B x F x N images), for the tiny and the paper config, plus one training
forward + backward of each (time and peak resident memory). Batch 1, 6 cameras, random weights
and images, a 6-camera ring 1.6 m above the ground looking outwards.

Each measurement runs in its own subprocess (peak memory = ``ru_maxrss`` of that process).
Times are medians of ``--repeats`` runs after one warm-up run.

    .venv/bin/python benchmarks/bench_student.py [--repeats 3] [--threads 2] [--configs tiny paper]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch

CONFIGS = {"tiny": "bevdepth_tiny", "paper": "bevdepth_r50_256x704_128x128_e24_2key"}


def _inputs(frames: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    n = 6
    imgs = torch.randn(1, frames, n, 3, *size, generator=torch.Generator().manual_seed(0))
    e = torch.eye(4).repeat(1, frames, n, 1, 1)
    for cam in range(n):
        yaw = 2 * math.pi * cam / n
        c, s = math.cos(yaw), math.sin(yaw)
        rot = torch.tensor([[s, 0.0, c], [-c, 0.0, s], [0.0, -1.0, 0.0]])
        e[:, :, cam, :3, :3] = rot
        e[:, :, cam, :3, 3] = torch.tensor([1.0, 0.0, 1.6])
    k = torch.eye(4).repeat(1, frames, n, 1, 1)
    k[..., 0, 0] = k[..., 1, 1] = 560.0 * size[1] / 704
    k[..., 0, 2], k[..., 1, 2] = size[1] / 2, size[0] / 2
    ida = torch.eye(4).repeat(1, frames, n, 1, 1)
    return {
        "imgs": imgs,
        "ego_from_camera": e,
        "intrinsics": k,
        "ida": ida,
        "bda": torch.eye(4)[None],
    }


def _build(name: str):
    from labeldistill.config import load_config
    from labeldistill.models.student import BEVDepthStudent

    cfg = load_config(CONFIGS[name], ["student.image_backbone.pretrained=false"])
    model = BEVDepthStudent(cfg.student, cfg.grid, cfg.num_frames, tuple(cfg.data.image_size))
    return model, cfg


def worker(mode: str, name: str, repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, cfg = _build(name)
    x = _inputs(cfg.num_frames, tuple(cfg.data.image_size))
    result: dict = {"config": CONFIGS[name], "mode": mode, "frames": cfg.num_frames}
    if mode == "inference":
        model.eval()
        flat = x["imgs"].flatten(0, 2)
        student_t, backbone_t = [], []
        with torch.no_grad():
            for _ in range(repeats + 1):
                t0 = time.perf_counter()
                model.backbone.img_neck(model.backbone.img_backbone(flat))
                t1 = time.perf_counter()
                model(**x)
                t2 = time.perf_counter()
                backbone_t.append(t1 - t0)
                student_t.append(t2 - t1)
        result["student_s"] = statistics.median(student_t[1:])
        result["backbone_s"] = statistics.median(backbone_t[1:])
        result["ratio"] = result["student_s"] / result["backbone_s"]
    else:
        model.train()
        times = []
        for _ in range(max(1, repeats)):
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            out = model(**x)
            boxes = [torch.tensor([[10.0, 2.0, 0.0, 4.5, 1.9, 1.6, 0.2, 0.0, 0.0]])]
            det = model.loss_detection(out, boxes, [torch.tensor([0])])
            h, w = cfg.data.image_size
            depth_gt = torch.zeros(1, 6, h, w)
            depth_gt[:, :, h // 2 :: 7, ::13] = 12.0
            loss = det["heatmap"] + det["bbox"] + 3.0 * model.loss_depth(out, depth_gt)
            loss.backward()
            times.append(time.perf_counter() - t0)
        result["step_s"] = statistics.median(times)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=["tiny", "paper"], choices=sorted(CONFIGS))
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "CONFIG"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.repeats, args.threads)))
        return
    print(f"threads {args.threads}; batch 1, 6 cameras; median of {args.repeats} runs")
    print(
        "| config | F | student inference s | image backbone+neck s | ratio "
        "| train fwd+bwd s | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.configs:
        res = {}
        for mode in ("inference", "train"):
            reps = args.repeats if mode == "inference" else 1
            cmd = [sys.executable, __file__, "--worker", mode, name, "--repeats", str(reps)]
            cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        inf, tr = res["inference"], res["train"]
        print(
            f"| {inf['config']} | {inf['frames']} | {inf['student_s']:.3f} "
            f"| {inf['backbone_s']:.3f} | "
            f"{inf['ratio']:.2f} | {tr['step_s']:.2f} | {tr['peak_rss_mb']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
