"""Training-step time of the benchmark's camera students under the four CPU settings of
precision x memory format, interleaved in one process (issue 10, lever 5: CPU speed).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_cpu_precision.py \
        --dataroot benchmarks/_work/accuracy/data-0-12 [--version v1.0-trainval] \
        [--configs bevdepth_tiny labeldistill_tiny] [--repeats 5] [--threads 1] [--set K=V ...]

Settings: ``fp32`` (float32, NCHW: the default), ``fp32_nhwc`` (``trainer.channels_last``),
``bf16`` (CPU autocast to bfloat16, what ``trainer.precision=bf16-mixed`` runs) and
``bf16_nhwc`` (both). One step = forward, the stage's weighted losses, backward, on one real
batch of the prepared set (:data:`BENCH_CAMERA`: key frame only, the ResNet frozen; ``--set``
adds overrides, e.g. the stride-8 student of the current bench budget). All four modules
share the same weights; the settings run in alternation (A, B, C, D, A, ...) after one
warm-up each, so the load of a shared machine hits all alike; reported: median seconds per
step, speed-up against ``fp32``, and the loss of each setting relative to ``fp32`` (the
numerics' price). LabelDistill configs run their two teachers at random init (the cost is the same).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from labeldistill.config import load_config
from labeldistill.training.datamodule import StageDataModule
from labeldistill.training.stage_module import StageModule

#: name -> (channels_last, bf16 autocast)
SETTINGS = {
    "fp32": (False, False),
    "fp32_nhwc": (True, False),
    "bf16": (False, True),
    "bf16_nhwc": (True, True),
}
#: The camera overrides of the bench budget of 2026-12-03 (key frame, key scan, frozen ResNet;
#: image features at stride 16: the figures of RESULTS.md); the current budget's stride 8 is
#: ``--set student.view_transform.downsample=8 --set student.image_neck.upsample_strides=...``.
BENCH_CAMERA = (
    "data.key_idxes=[]",
    "data.lidar_sweeps=0",
    "student.image_backbone.frozen_stages=4",
    "data.num_workers=0",
)


def measure(config: str, overrides: list[str], repeats: int) -> dict:
    """Median step seconds, speed-up and relative loss of every setting (see module doc)."""
    torch.manual_seed(0)
    modules = {}
    for name, (nhwc, _) in SETTINGS.items():
        cfg = load_config(config, [*overrides, f"trainer.channels_last={str(nhwc).lower()}"])
        modules[name] = StageModule(cfg)
    ref = modules["fp32"]
    for m in modules.values():
        m.load_state_dict(ref.state_dict())
        m.train()
    dm = StageDataModule(ref.cfg, needs_lidar=ref.needs_lidar, needs_depth=ref.needs_depth)
    batch = next(iter(dm.train_dataloader()))
    times: dict[str, list[float]] = {k: [] for k in SETTINGS}
    losses: dict[str, float] = {}
    for r in range(repeats + 1):
        for name, (_, bf16) in SETTINGS.items():
            m = modules[name]
            m.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = m.compute_losses(batch).total
            loss.backward()
            dt = time.perf_counter() - t0
            if r:  # the first round is the warm-up
                times[name].append(dt)
            losses[name] = float(loss.detach())
    base = statistics.median(times["fp32"])
    rows = {}
    for name in SETTINGS:
        med = statistics.median(times[name])
        rows[name] = {
            "step_s": med,
            "speedup": base / med,
            "loss_rel": losses[name] / losses["fp32"] - 1.0,
        }
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataroot", required=True, help="a prepared set (labeldistill prepare)")
    p.add_argument("--version", default="v1.0-trainval")
    p.add_argument("--configs", nargs="+", default=["bevdepth_tiny", "labeldistill_tiny"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="K=V", help="extra override")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    train, val = ("mini_train", "mini_val") if a.version == "v1.0-mini" else ("train", "val")
    overrides = [
        f"data.dataroot={a.dataroot}",
        f"data.version={a.version}",
        f"data.train_split={train}",
        f"data.val_split={val}",
        *BENCH_CAMERA,
        *a.set,
    ]
    out = {c: measure(c, overrides, a.repeats) for c in a.configs}
    print(f"threads {a.threads}, median of {a.repeats} steps after one warm-up, interleaved")
    print("| config | setting | s / step | speed-up vs fp32 | loss vs fp32 |")
    print("|---|---|---|---|---|")
    for c, rows in out.items():
        for name, r in rows.items():
            print(
                f"| {c} | {name} | {r['step_s']:.3f} | {r['speedup']:.2f}x | "
                f"{100 * r['loss_rel']:+.2f} % |"
            )
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
