"""Training speed (steps/s) of the tiny configs on CPU, and the synthetic accuracy run.

Speed: a real Lightning fit of ``bevdepth_tiny`` / ``centerpoint_tiny`` on a prepared synthetic
set (data loading included, workers as configured), timed per step by a callback after a
warm-up; median over the measured steps. As a same-run reference, the bare model step
(forward + backward + AdamW on one pre-collated batch, no Lightning, no loading) is timed too:
the ratio shows what the loop and the data loading cost.

Accuracy (``--accuracy``): both tiny configs trained with the same budget (epochs) on the
synthetic mini_train split and evaluated with the official metric on mini_val.

    .venv/bin/python benchmarks/bench_train.py --dataroot demo_out/data
    .venv/bin/python benchmarks/bench_train.py --dataroot demo_out/data --accuracy --epochs 20
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import lightning as L
import torch

from labeldistill.config import load_config
from labeldistill.training import run
from labeldistill.training.datamodule import StageDataModule
from labeldistill.training.optim import build_optimizer
from labeldistill.training.stage_module import StageModule


class StepTimer(L.Callback):
    """Wall and process-CPU time of every training step (batch start to batch end)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []
        self._t = 0.0
        self._c = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t = time.perf_counter()
        self._c = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._t)
        self.cpu.append(time.process_time() - self._c)


def loop_steps_per_s(cfg, steps: int, warmup: int) -> dict[str, float]:
    """Median time between batch start and end inside Lightning (wall and process CPU; the
    CPU figure is robust to other load on a shared machine) and wall-clock steps/s of the whole
    fit including loading and start-up."""
    module = StageModule(cfg, global_batch=cfg.data.batch_size)
    dm = StageDataModule(cfg, needs_lidar=module.needs_lidar, needs_depth=module.needs_depth)
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps + warmup,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=cfg.optim.grad_clip,
        use_distributed_sampler=False,
        callbacks=[timer],
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    wall = time.perf_counter() - t0
    measured = timer.times[warmup:]
    return {
        "step_cpu_s_median": statistics.median(timer.cpu[warmup:]),
        "step_s_median": statistics.median(measured),
        "steps_per_s": 1.0 / statistics.median(measured),
        "fit_wall_s": wall,
        "fit_steps_per_s_incl_loading_and_startup": (steps + warmup) / wall,
    }


def bare_steps_per_s(cfg, steps: int, warmup: int) -> float:
    """Model step alone on one cached batch: forward, loss, backward, clip, AdamW."""
    module = StageModule(cfg, global_batch=cfg.data.batch_size)
    dm = StageDataModule(cfg, needs_lidar=module.needs_lidar, needs_depth=module.needs_depth)
    batch = next(iter(dm._loader(dm.train_dataset, train=True)))
    opt = build_optimizer(module.model, cfg.optim, cfg.data.batch_size)
    module.train()
    times = []
    for i in range(steps + warmup):
        t = time.perf_counter()
        loss = module.compute_losses(batch).total
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.model.parameters(), cfg.optim.grad_clip)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return 1.0 / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataroot", required=True, help="prepared synthetic v1.0-mini root")
    p.add_argument("--configs", nargs="+", default=["bevdepth_tiny", "centerpoint_tiny"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=None, help="override data.num_workers")
    p.add_argument("--accuracy", action="store_true", help="train + evaluate each config")
    p.add_argument("--epochs", type=int, default=20, help="budget of the accuracy run")
    p.add_argument("--out", default="benchmarks/_work/train", help="accuracy run outputs")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = {}
    for name in args.configs:
        overrides = [f"data.dataroot={args.dataroot}"]
        if args.workers is not None:
            overrides.append(f"data.num_workers={args.workers}")
        cfg = load_config(name, overrides)
        if args.accuracy:
            cfg = load_config(
                name,
                overrides
                + [
                    f"trainer.output_dir={args.out}",
                    f"trainer.max_epochs={args.epochs}",
                    "trainer.accelerator=cpu",
                ],
            )
            t0 = time.perf_counter()
            metrics = run.train_and_evaluate(cfg)
            results[name] = {
                "mAP": metrics["mAP"],
                "NDS": metrics["NDS"],
                "per_class_AP": metrics["per_class_AP"],
                "train_eval_wall_s": time.perf_counter() - t0,
            }
        else:
            loop = loop_steps_per_s(cfg, args.steps, args.warmup)
            bare = bare_steps_per_s(cfg, args.steps, args.warmup)
            results[name] = {
                **loop,
                "bare_model_steps_per_s": bare,
                "loop_over_bare_ratio": loop["steps_per_s"] / bare,
                "batch_size": cfg.data.batch_size,
            }
        print(name, json.dumps(results[name], indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
