"""Where the time of the camera student goes (issue 13 item 10): one inference and one
training step under ``torch.profiler``, split into dense convolutions and everything else.

    PYTHONPATH=src .venv/bin/python benchmarks/profile_student.py [--config NAME] [--device cpu]
        [--batch 1] [--threads 1] [--amp none|fp16|bf16] [--json OUT]

Inputs are synthetic tensors at the config's shapes (random uint8 images, the nuScenes camera
rig of benchmarks/bench_voxel_pool.py, 40 random GT boxes, sparse random depth), so no dataset is
needed. Two views of the same profile:

* by operator (self time): dense convolutions (``aten::*convolution*`` forward and backward,
  i.e. what cuDNN / oneDNN run), deformable convolution (torchvision's DCN in the DepthNet, not
  a cuDNN kernel), and everything else;
* by stage (inclusive time of ``record_function`` ranges put around the model's parts from
  outside, no model code changed): data movement (host -> device copy and image
  normalisation), image backbone, image neck, DepthNet, frustum geometry, voxel pooling, BEV
  encoder, head, decode (top-k + box decoding), circle NMS, loss + targets, backward,
  optimiser.

On CUDA the device time of the operators is used (``self_device_time_total``) and the stage
times are wall-clock ranges after a synchronise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

STAGES = (
    "data_movement",
    "image_backbone",
    "image_neck",
    "depth_net",
    "geometry",
    "voxel_pooling",
    "bev_encoder",
    "head",
    "decode",
    "nms",
    "loss_and_targets",
    "backward",
    "optimizer",
)
DENSE_CONV_OPS = (
    "aten::convolution",
    "aten::_convolution",
    "aten::conv2d",
    "aten::mkldnn_convolution",
    "aten::cudnn_convolution",
    "aten::_slow_conv2d_forward",
    "aten::thnn_conv2d",
    "aten::convolution_backward",
    "aten::cudnn_convolution_backward",
    "aten::_slow_conv2d_backward",
    "aten::mkldnn_convolution_backward",
)


def _is_dense_conv(name: str) -> bool:
    return name in DENSE_CONV_OPS or (
        name.startswith("aten::") and "convolution" in name and "deform" not in name
    )


def _is_deform(name: str) -> bool:
    return "deform_conv" in name


class StageTimer:
    """Wall-clock time per stage (synchronised on CUDA) + profiler ranges of the same names."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            with torch.profiler.record_function(f"stage::{name}"):
                yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            dt = time.perf_counter() - t0
            self.times[name] = self.times.get(name, 0.0) + dt


def _wrap(fn: Callable[..., Any], timer: StageTimer, name: str) -> Callable[..., Any]:
    def inner(*args: Any, **kwargs: Any) -> Any:
        with timer.stage(name):
            return fn(*args, **kwargs)

    return inner


def instrument(model: torch.nn.Module, timer: StageTimer) -> Callable[[], None]:
    """Put stage ranges around the student's parts; returns an undo function."""
    from labeldistill.models import center_head, view_transform
    from labeldistill.ops import box_coder

    lss = model.backbone
    undo: list[Callable[[], None]] = []

    def patch_attr(obj: Any, attr: str, name: str) -> None:
        orig = getattr(obj, attr)
        setattr(obj, attr, _wrap(orig, timer, name))
        undo.append(lambda: setattr(obj, attr, orig))

    for mod, name in ((lss.img_backbone, "image_backbone"), (lss.img_neck, "image_neck")):
        patch_attr(mod, "forward", name)
    patch_attr(lss.depth_net, "forward", "depth_net")
    patch_attr(lss, "pool", "voxel_pooling")
    patch_attr(view_transform, "frustum_geometry", "geometry")
    patch_attr(model.head, "encode", "bev_encoder")
    patch_attr(model.head, "forward", "head")
    patch_attr(box_coder, "decode", "decode")
    patch_attr(center_head, "circle_nms", "nms")

    def restore() -> None:
        for u in reversed(undo):
            u()

    return restore


def synthetic_inputs(cfg: Any, batch: int, boxes: int = 40) -> dict[str, Any]:
    from bench_voxel_pool import camera_rig

    f = cfg.num_frames
    h, w = cfg.data.image_size
    rig = camera_rig()
    scale = w / 1600
    ida = torch.eye(4).repeat(1, 6, 1, 1)
    ida[..., 0, 0] = ida[..., 1, 1] = scale
    ida[..., 1, 3] = -(900 * scale - h)
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (batch, f, 6, 3, h, w), generator=g, dtype=torch.uint8)

    def rep(m: torch.Tensor) -> torch.Tensor:
        return m.view(1, 1, 6, 4, 4).expand(batch, f, 6, 4, 4).contiguous()

    gt_boxes, gt_labels = [], []
    for _ in range(batch):
        bx = torch.zeros(boxes, 9)
        bx[:, :2] = torch.rand(boxes, 2, generator=g) * 90 - 45
        bx[:, 3:6] = torch.rand(boxes, 3, generator=g) * 3 + 0.5
        gt_boxes.append(bx)
        gt_labels.append(torch.randint(0, 10, (boxes,), generator=g))
    depth = torch.rand(batch, 6, h, w, generator=g) * 60
    depth = depth * (torch.rand(batch, 6, h, w, generator=g) < 0.02)
    return {
        "imgs": imgs,
        "ego_from_camera": rep(rig["ego"]),
        "intrinsics": rep(rig["intrinsics"]),
        "ida": rep(ida[0]),
        "bda": torch.eye(4).expand(batch, 4, 4).contiguous(),
        "gt_boxes": gt_boxes,
        "gt_labels": gt_labels,
        "depth": depth,
    }


def _move(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = {}
    for k, v in inputs.items():
        if isinstance(v, list):
            out[k] = [t.to(device, non_blocking=True) for t in v]
        else:
            out[k] = v.to(device, non_blocking=True)
    return out


def _summarise(prof: Any, device: torch.device, timer: StageTimer, total_s: float) -> dict:
    use_device = device.type == "cuda"
    dense = deform = other = 0.0
    top: list[tuple[str, float]] = []
    for evt in prof.key_averages():
        if evt.key.startswith("stage::") or evt.key.startswith("ProfilerStep"):
            continue
        # operator rows only: a CUDA kernel row repeats device time its operator already has
        if not str(getattr(evt, "device_type", "CPU")).endswith("CPU"):
            continue
        if use_device:
            dev_t = getattr(evt, "self_device_time_total", None)
            if dev_t is None:
                dev_t = getattr(evt, "self_cuda_time_total", 0.0)
            t = float(dev_t) / 1e6
        else:
            t = float(evt.self_cpu_time_total) / 1e6
        if t <= 0:
            continue
        if _is_dense_conv(evt.key):
            dense += t
        elif _is_deform(evt.key):
            deform += t
        else:
            other += t
            top.append((evt.key, t))
    ops_total = dense + deform + other
    top.sort(key=lambda kv: -kv[1])
    stages = {k: timer.times[k] for k in STAGES if k in timer.times}
    return {
        "wall_s": total_s,
        "op_time_s": ops_total,
        "dense_conv_s": dense,
        "deform_conv_s": deform,
        "other_s": other,
        "dense_conv_share": dense / ops_total if ops_total else 0.0,
        "non_dense_conv_share": (deform + other) / ops_total if ops_total else 0.0,
        "stages_s": stages,
        "top_other_ops": [{"op": k, "s": v} for k, v in top[:12]],
    }


def profile_student(
    config: str = "bevdepth_r50_256x704_128x128_e24_2key",
    device: str = "cpu",
    batch: int = 1,
    amp: str = "none",
    overrides: list[str] | None = None,
    warmup: int = 1,
) -> dict:
    """Profile one inference and one training step; returns the two summaries."""
    from labeldistill.config import load_config
    from labeldistill.models.build import build_student
    from labeldistill.training.optim import build_optimizer

    dev = torch.device(device)
    cfg = load_config(config, ["student.image_backbone.pretrained=false", *(overrides or [])])
    model = build_student(cfg).to(dev)
    opt = build_optimizer(model, cfg.optim, batch)
    host = synthetic_inputs(cfg, batch)
    if dev.type == "cuda":
        host = {
            k: ([t.pin_memory() for t in v] if isinstance(v, list) else v.pin_memory())
            for k, v in host.items()
        }
    dtype = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[amp]

    def autocast() -> Any:
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(dev.type, dtype=dtype)

    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
    results: dict[str, Any] = {"config": config, "device": device, "batch": batch, "amp": amp}

    def inference(timer: StageTimer) -> None:
        with timer.stage("data_movement"):
            x = _move(host, dev)
        with torch.no_grad(), autocast():
            out = model(x["imgs"], x["ego_from_camera"], x["intrinsics"], x["ida"], x["bda"])
            model.decode(out)

    def train_step(timer: StageTimer) -> None:
        with timer.stage("data_movement"):
            x = _move(host, dev)
        model.train()
        with autocast():
            out = model(x["imgs"], x["ego_from_camera"], x["intrinsics"], x["ida"], x["bda"])
            with timer.stage("loss_and_targets"):
                det = model.loss_detection(out, x["gt_boxes"], x["gt_labels"])
                loss = det["heatmap"] + det["bbox"] + 3.0 * model.loss_depth(out, x["depth"])
        with timer.stage("backward"):
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
        with timer.stage("optimizer"):
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            scaler.step(opt)
            scaler.update()

    for name, fn, train in (("inference", inference, False), ("train_step", train_step, True)):
        model.train(train)
        for _ in range(warmup):
            fn(StageTimer(dev))
        timer = StageTimer(dev)
        restore = instrument(model, timer)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if dev.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize(dev)
        try:
            with torch.profiler.profile(activities=activities) as prof:
                t0 = time.perf_counter()
                fn(timer)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                total = time.perf_counter() - t0
        finally:
            restore()
        results[name] = _summarise(prof, dev, timer, total)
    return results


def format_profile(res: dict) -> str:
    lines = [
        f"config {res['config']}, device {res['device']}, batch {res['batch']}, amp {res['amp']}",
        "",
        "| | inference | training step |",
        "|---|---:|---:|",
    ]
    inf, tr = res["inference"], res["train_step"]
    lines.append(f"| wall (s) | {inf['wall_s']:.3f} | {tr['wall_s']:.3f} |")
    for key, label in (
        ("dense_conv_s", "dense convolutions (s)"),
        ("deform_conv_s", "deformable conv (DCN) (s)"),
        ("other_s", "everything else (s)"),
    ):
        lines.append(f"| {label} | {inf[key]:.3f} | {tr[key]:.3f} |")
    lines.append(
        f"| **not a dense convolution** | **{100 * inf['non_dense_conv_share']:.1f} %** | "
        f"**{100 * tr['non_dense_conv_share']:.1f} %** |"
    )
    lines.append("")
    lines.append("| stage (inclusive wall s) | inference | training step |")
    lines.append("|---|---:|---:|")
    for st in STAGES:
        a, b = inf["stages_s"].get(st), tr["stages_s"].get(st)
        if a is None and b is None:
            continue
        fa = f"{a:.3f}" if a is not None else "-"
        fb = f"{b:.3f}" if b is not None else "-"
        lines.append(f"| {st} | {fa} | {fb} |")
    lines.append("")
    lines.append(
        "top non-convolution operators of the inference (self time, s): "
        + ", ".join(f"{o['op']} {o['s']:.3f}" for o in inf["top_other_ops"][:8])
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="bevdepth_r50_256x704_128x128_e24_2key")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--amp", choices=["none", "fp16", "bf16"], default="none")
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    res = profile_student(args.config, args.device, args.batch, args.amp, args.set)
    print(format_profile(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
