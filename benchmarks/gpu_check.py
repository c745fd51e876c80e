"""A GPU check anyone can run (issue 13): the CUDA paths of labeldistill in a few minutes.

    PYTHONPATH=src python benchmarks/gpu_check.py                     # CUDA, paper shapes
    PYTHONPATH=src python benchmarks/gpu_check.py --device cpu --tiny # dry run (the test suite)
        [--out gpu_check.json] [--dataroot DIR] [--batch 2] [--points 300000] [--skip NAME ...]

One line per check (``PASS`` / ``FAIL`` / ``SKIP`` + figures), and a JSON of every figure:

* ``pooling``: fast voxel pooling vs the reference on the device at the paper shapes (B = 1,
  6 cameras, D = 112, 16 x 44, C = 80): fp32 parity, parity under fp16 and bf16 autocast (the
  sparse products must stay fp32), timings of index preparation / forward / backward, peak
  memory;
* ``student_step``: one paper-student training step (R50 256x704, 2 key frames) under
  ``16-mixed`` (fp16 autocast + GradScaler + gradient clipping): finite loss, step time, peak
  memory, host syncs per step counted with ``torch.cuda.set_sync_debug_mode('warn')``;
* ``teacher_step``: one paper LiDAR-teacher step on ~300k random points with the torch sparse
  backend and, when spconv is usable, the parity of the sparse encoder between the backends;
* ``profile``: the split of one inference and one training step into dense convolutions and
  everything else (benchmarks/profile_student.py);
* ``lightning``: the Lightning path on the tiny configs: ``16-mixed`` (``bf16-mixed`` on CPU),
  DDP with one process, EMA, checkpoint, resume.

``--tiny`` runs the same code at tiny shapes (bevdepth_tiny / centerpoint_tiny, small images,
few points), with bf16 autocast on CPU (``16-mixed`` is CUDA only), so the script cannot rot:
the test suite runs ``--device cpu --tiny``. Exit code 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


#: Operators that make the host wait for the device on CUDA.
SYNCING_OPS = (
    "_local_scalar_dense",
    "nonzero",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "masked_select",
    "bincount",
    "_unique",
)


class _SyncProxy(torch.utils._python_dispatch.TorchDispatchMode):
    """CPU stand-in of CUDA's sync debug mode: counts operators of :data:`SYNCING_OPS`."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.by_op: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNCING_OPS:
            self.count += 1
            self.by_op[name] = self.by_op.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


class Device:
    """Timing, peak memory and sync counting on one device (CUDA figures; CPU: None)."""

    def __init__(self, name: str) -> None:
        self.device = torch.device(name)
        self.cuda = self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None

    def time(self, fn: Callable[[], Any], repeats: int) -> float:
        """Median seconds of ``fn`` (synchronised) after one untimed warm-up call."""
        fn()
        times = []
        for _ in range(repeats):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    @contextlib.contextmanager
    def count_syncs(self) -> Iterator[list[int]]:
        """Counts host synchronisations: CUDA's sync debug mode ('warn') on CUDA; on CPU a proxy,
        the operators that synchronise on CUDA (scalar reads, data-dependent output sizes)."""
        box = [-1]
        if not self.cuda:
            with _SyncProxy() as proxy:
                yield box
            box[0] = proxy.count
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield box
            finally:
                torch.cuda.set_sync_debug_mode(0)
        box[0] = sum(1 for w in caught if "synchroniz" in str(w.message).lower())

    def autocast_dtypes(self) -> list[torch.dtype]:
        if self.cuda:
            out = [torch.float16]
            if torch.cuda.is_bf16_supported():
                out.append(torch.bfloat16)
            return out
        return [torch.float16, torch.bfloat16]


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-12))


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------


def check_pooling(dev: Device, tiny: bool, repeats: int) -> dict:
    from bench_voxel_pool import camera_rig
    from labeldistill.config import GridConfig
    from labeldistill.models.view_transform import frustum_geometry, make_frustum
    from labeldistill.ops.voxel_pool import (
        VoxelGrid,
        pooling_pattern,
        voxel_pool,
        voxel_pool_reference,
    )

    d = dev.device
    grid_cfg = GridConfig()
    grid = VoxelGrid.from_config(grid_cfg)
    size, c = ((64, 176), 16) if tiny else ((256, 704), 80)
    rig = camera_rig()
    scale = size[1] / 1600
    ida = torch.eye(4).repeat(1, 6, 1, 1)
    ida[..., 0, 0] = ida[..., 1, 1] = scale
    ida[..., 1, 3] = -(900 * scale - size[0])
    frustum = make_frustum(size, 16, grid_cfg.d_bound).to(d)
    geom = frustum_geometry(
        frustum, rig["ego"].to(d), rig["intrinsics"].to(d), ida.to(d), torch.eye(4, device=d)[None]
    )
    h, w = size[0] // 16, size[1] // 16
    g = torch.Generator().manual_seed(0)
    depth = torch.randn(1, 6, grid_cfg.num_depth_bins, h, w, generator=g).softmax(2).to(d)
    context = torch.randn(1, 6, c, h, w, generator=g).to(d)
    grad_out = torch.randn(1, c, grid.size[1], grid.size[0], generator=g).to(d)

    def run(fn: Callable, amp: torch.dtype | None) -> tuple[torch.Tensor, ...]:
        dp = depth.clone().requires_grad_(True)
        cx = context.clone().requires_grad_(True)
        with torch.autocast(d.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = fn(geom, dp, cx, grid)
        out.backward(grad_out)
        return out.detach(), dp.grad, cx.grad

    ref = run(voxel_pool_reference, None)
    fast = run(voxel_pool, None)
    res: dict[str, Any] = {
        "shape": {"B": 1, "N": 6, "D": grid_cfg.num_depth_bins, "h": h, "w": w, "C": c},
        "fp32_max_rel_diff": max(_max_rel(a, b) for a, b in zip(fast, ref)),
    }
    ok = res["fp32_max_rel_diff"] < 1e-4
    for amp in dev.autocast_dtypes():
        out = run(voxel_pool, amp)
        key = f"{str(amp).split('.')[-1]}_autocast_max_rel_diff"
        res[key] = max(_max_rel(a, b) for a, b in zip(out, ref))
        res[f"{str(amp).split('.')[-1]}_autocast_out_dtype"] = str(out[0].dtype)
        ok = ok and res[key] < 1e-4 and out[0].dtype == torch.float32
    dp = depth.clone().requires_grad_(True)
    cx = context.clone().requires_grad_(True)
    dev.reset_peak()
    res["index_prep_ms"] = 1e3 * dev.time(lambda: pooling_pattern(geom, grid), repeats)
    res["forward_ms"] = 1e3 * dev.time(lambda: voxel_pool(geom, dp, cx, grid), repeats)

    def fwd_bwd() -> None:
        voxel_pool(geom, dp, cx, grid).backward(grad_out)

    res["backward_ms"] = 1e3 * dev.time(fwd_bwd, repeats) - res["forward_ms"]
    res["peak_mib"] = dev.peak_mib()  # fast pooling (index preparation, forward, backward)
    dev.reset_peak()
    res["reference_fwd_bwd_ms"] = 1e3 * dev.time(
        lambda: voxel_pool_reference(geom, dp, cx, grid).backward(grad_out), repeats
    )
    res["reference_peak_mib"] = dev.peak_mib()
    res["ok"] = bool(ok)
    return res


def _amp_dtype(dev: Device) -> torch.dtype:
    """16-mixed = fp16 autocast + GradScaler on CUDA; the CPU stand-in keeps the GradScaler
    (same code path) with bf16 autocast (fp16 convolutions on CPU are ~50x slower)."""
    return torch.float16 if dev.cuda else torch.bfloat16


def _student_inputs(cfg: Any, dev: Device, batch: int) -> dict:
    from profile_student import synthetic_inputs

    host = synthetic_inputs(cfg, batch)
    if dev.cuda:
        host = {
            k: ([t.pin_memory() for t in v] if isinstance(v, list) else v.pin_memory())
            for k, v in host.items()
        }
    return host


def check_student_step(dev: Device, tiny: bool, batch: int, repeats: int) -> dict:
    from labeldistill.config import load_config
    from labeldistill.models.build import build_student
    from labeldistill.training.optim import build_optimizer

    name = "bevdepth_tiny" if tiny else "bevdepth_r50_256x704_128x128_e24_2key"
    sets = ["student.image_backbone.pretrained=false"]
    if tiny:
        sets += ["data.image_size=[64, 192]", "data.key_idxes=[-2]"]
    cfg = load_config(name, sets)
    model = build_student(cfg).to(dev.device).train()
    opt = build_optimizer(model, cfg.optim, batch)
    amp = _amp_dtype(dev)
    scaler = torch.amp.GradScaler(dev.device.type)
    host = _student_inputs(cfg, dev, batch)
    losses: list[float] = []

    def step(count: list[int] | None = None) -> torch.Tensor:
        # on CPU the sync proxy covers copy + forward + loss + backward (the CPU GradScaler
        # reads one flag per parameter; the CUDA one reads one per device)
        proxy = (
            dev.count_syncs() if count is not None and not dev.cuda else contextlib.nullcontext([0])
        )
        with proxy as n:
            loss = _forward_backward()
        if count is not None and not dev.cuda:
            count[0] = n[0]
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        scaler.step(opt)
        scaler.update()
        return loss.detach()

    def _forward_backward() -> torch.Tensor:
        x = {
            k: (
                [t.to(dev.device, non_blocking=True) for t in v]
                if isinstance(v, list)
                else v.to(dev.device, non_blocking=True)
            )
            for k, v in host.items()
        }
        with torch.autocast(dev.device.type, dtype=amp):
            out = model(x["imgs"], x["ego_from_camera"], x["intrinsics"], x["ida"], x["bda"])
            det = model.loss_detection(out, x["gt_boxes"], x["gt_labels"])
            loss = det["heatmap"] + det["bbox"] + 3.0 * model.loss_depth(out, x["depth"])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        return loss

    losses.append(float(step()))  # warm-up (cudnn.benchmark, allocator)
    dev.reset_peak()
    step_s = dev.time(lambda: losses.append(float(step())), repeats)
    if dev.cuda:
        with dev.count_syncs() as syncs:
            loss = step()
    else:
        syncs = [0]
        loss = step(syncs)
    dev.sync()
    losses.append(float(loss))
    return {
        "config": name,
        "batch": batch,
        "autocast": str(amp),
        "grad_scaler": scaler.is_enabled(),
        "losses": losses,
        "step_s": step_s,
        "peak_mib": dev.peak_mib(),
        "host_syncs_per_step": syncs[0],
        "host_syncs_counted_by": (
            "cuda sync debug mode, whole step"
            if dev.cuda
            else "CPU proxy: syncing ops of copy + forward + loss + backward"
        ),
        "ok": all(math.isfinite(v) for v in losses),
    }


def _random_points(cfg: Any, n: int, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    lo = torch.tensor(cfg.lidar_teacher.point_range[:3])
    hi = torch.tensor(cfg.lidar_teacher.point_range[3:])
    xyz = lo + torch.rand(batch, n, 3, generator=g) * (hi - lo)
    xyz[..., 2] = torch.randn(batch, n, generator=g).clamp(-3, 2)  # a ground band
    extra = torch.rand(batch, n, 2, generator=g) * torch.tensor([255.0, 0.5])
    return torch.cat([xyz, extra], dim=2)


def check_teacher_step(dev: Device, tiny: bool, points: int, repeats: int) -> dict:
    from labeldistill.config import load_config
    from labeldistill.models.build import build_lidar_teacher
    from labeldistill.ops.sparse_conv import spconv_module, spconv_unavailable_reason
    from labeldistill.training.optim import build_optimizer

    name = "centerpoint_tiny" if tiny else "centerpoint_vox01_128x128_20e_10sweeps"
    cfg = load_config(name, ["lidar_teacher.sparse_backend=torch"])
    n = 4000 if tiny else points
    pts = _random_points(cfg, n, 1).to(dev.device)
    model = build_lidar_teacher(cfg).to(dev.device).train()
    opt = build_optimizer(model, cfg.optim, 1)
    head = model.pts_bbox_head
    boxes = [torch.tensor([[5.0, 5.0, 0.0, 4.0, 2.0, 1.5, 0.3, 0.0, 0.0]], device=dev.device)]
    labels = [torch.zeros(1, dtype=torch.long, device=dev.device)]
    amp = _amp_dtype(dev)
    scaler = torch.amp.GradScaler(dev.device.type)
    losses: list[float] = []

    def step() -> None:
        with torch.autocast(dev.device.type, dtype=amp):
            out = model(pts)
            det = head.loss(out.head, head.get_targets(boxes, labels))
            loss = det["heatmap"] + det["bbox"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))

    step()
    dev.reset_peak()
    res: dict[str, Any] = {
        "config": name,
        "points": n,
        "torch_backend_step_s": dev.time(step, repeats),
        "peak_mib": dev.peak_mib(),
        "losses": losses,
    }
    ok = all(math.isfinite(v) for v in losses)
    if spconv_module() is not None and dev.cuda:
        model.eval()
        encoder = model.pts_middle_encoder
        with torch.no_grad():
            vox = model.voxelize(pts)
            from labeldistill.ops.voxelize import mean_voxel_features

            feats = mean_voxel_features(vox.voxels, vox.num_points, cfg.lidar_teacher.in_channels)
            outs = {}
            for backend in ("torch", "spconv"):
                for m in encoder.modules():
                    if hasattr(m, "backend"):
                        m.backend = backend
                outs[backend] = encoder(feats, vox.coors, 1)
        res["spconv_vs_torch_max_rel_diff"] = _max_rel(outs["spconv"], outs["torch"])
        ok = ok and res["spconv_vs_torch_max_rel_diff"] < 1e-2
    else:
        res["spconv"] = spconv_unavailable_reason() or (
            "not tried on CPU" if not dev.cuda else "not installed"
        )
    res["ok"] = bool(ok)
    return res


def check_profile(dev: Device, tiny: bool, batch: int) -> dict:
    from profile_student import profile_student

    if tiny:
        res = profile_student(
            "bevdepth_tiny",
            str(dev.device),
            1,
            "bf16" if not dev.cuda else "fp16",
            ["data.image_size=[64, 192]", "data.key_idxes=[]"],
            warmup=0,
        )
    else:
        res = profile_student(
            "bevdepth_r50_256x704_128x128_e24_2key", str(dev.device), batch, "fp16"
        )
    res["ok"] = all(
        0.0 <= res[k]["non_dense_conv_share"] <= 1.0 and res[k]["op_time_s"] > 0
        for k in ("inference", "train_step")
    )
    return res


def _tiny_dataset(root: Path) -> Path:
    from labeldistill.data.prepare import prepare
    from labeldistill.synth.generate import SynthConfig, generate

    cfg = SynthConfig(seed=3, samples_per_scene=2, image_width=352, image_height=198)
    generate(root, cfg, workers=1, overwrite=True)
    prepare(root, "v1.0-mini", workers=1)
    return root


def check_lightning(dev: Device, dataroot: Path | None, work: Path) -> dict:
    from labeldistill.config import load_config
    from labeldistill.training import run

    root = dataroot if dataroot is not None else _tiny_dataset(work / "synthetic")
    precision = "16-mixed" if dev.cuda else "bf16-mixed"
    sets = [
        f"data.dataroot={root}",
        f"trainer.output_dir={work / 'runs'}",
        "data.num_workers=0",
        "data.image_size=[64, 192]",
        "data.key_idxes=[]",
        "data.train_split=mini_val",
        "data.batch_size=2",
        f"trainer.accelerator={'gpu' if dev.cuda else 'cpu'}",
        "trainer.devices=1",
        "trainer.strategy=ddp",
        f"trainer.precision={precision}",
        "trainer.ema=true",
        "trainer.log_every_n_steps=1",
        "student.image_backbone.pretrained=false",
    ]
    t0 = time.perf_counter()
    first = run.train(load_config("bevdepth_tiny", [*sets, "trainer.max_steps=2"]))
    state = torch.load(first.last_ckpt, map_location="cpu", weights_only=True)
    resumed = run.train(load_config("bevdepth_tiny", [*sets, "trainer.max_steps=3"]), resume="last")
    state2 = torch.load(resumed.last_ckpt, map_location="cpu", weights_only=True)
    ok = (
        state["global_step"] == 2
        and state2["global_step"] == 3
        and "ema_state_dict" in state2
        and first.ema_weights is not None
        and all(
            torch.isfinite(v).all() for v in state2["state_dict"].values() if v.is_floating_point()
        )
    )
    return {
        "precision": precision,
        "strategy": "ddp (1 process)",
        "steps": [int(state["global_step"]), int(state2["global_step"])],
        "ema_in_checkpoint": "ema_state_dict" in state2,
        "wall_s": time.perf_counter() - t0,
        "ok": bool(ok),
    }


CHECKS = ("pooling", "student_step", "teacher_step", "profile", "lightning")


def _line(name: str, res: dict) -> str:
    status = res.get("status") or ("PASS" if res.get("ok") else "FAIL")
    figures = []
    for k, v in res.items():
        if k in ("ok", "status", "losses", "top_other_ops", "inference", "train_step", "shape"):
            continue
        if isinstance(v, float):
            figures.append(f"{k}={v:.4g}")
        elif isinstance(v, (int, str, bool)) or v is None:
            figures.append(f"{k}={v}")
    for k in ("inference", "train_step"):
        if k in res:
            figures.append(
                f"{k}_non_dense_conv={100 * res[k]['non_dense_conv_share']:.1f}%"
                f" {k}_wall_s={res[k]['wall_s']:.3g}"
            )
    return f"{status:4s} {name}: " + " ".join(figures)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU dry run)")
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    p.add_argument("--dataroot", type=Path, default=None, help="prepared synthetic v1.0-mini")
    p.add_argument("--batch", type=int, default=2, help="student batch of the paper step")
    p.add_argument("--points", type=int, default=300_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--skip", nargs="*", default=[], choices=CHECKS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device (use --device cpu --tiny for the dry run)", file=sys.stderr)
        return 2
    dev = Device(args.device)
    repeats = 1 if args.tiny else args.repeats
    report: dict[str, Any] = {
        "device": str(dev.device),
        "device_name": torch.cuda.get_device_name(dev.device) if dev.cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tiny": args.tiny,
        "checks": {},
    }
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs: dict[str, Callable[[], dict]] = {
            "pooling": lambda: check_pooling(dev, args.tiny, repeats),
            "student_step": lambda: check_student_step(
                dev, args.tiny, 1 if args.tiny else args.batch, repeats
            ),
            "teacher_step": lambda: check_teacher_step(dev, args.tiny, args.points, repeats),
            "profile": lambda: check_profile(dev, args.tiny, 1 if args.tiny else args.batch),
            "lightning": lambda: check_lightning(dev, args.dataroot, Path(tmp)),
        }
        for name in CHECKS:
            if name in args.skip:
                res = {"status": "SKIP"}
            else:
                t0 = time.perf_counter()
                try:
                    res = runs[name]()
                except Exception as exc:
                    res = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                    traceback.print_exc()
                res["check_s"] = time.perf_counter() - t0
            report["checks"][name] = res
            print(_line(name, res), flush=True)
    report["total_s"] = time.perf_counter() - t_start
    args.out.write_text(json.dumps(report, indent=2, default=str))
    failed = [n for n, r in report["checks"].items() if r.get("status") != "SKIP" and not r["ok"]]
    print(f"{'FAIL' if failed else 'PASS'} all: {report['total_s']:.1f} s, figures in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
