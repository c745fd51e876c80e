"""Issue 13: interleaved A/B speed ratios of the CUDA-readiness changes, on CPU, in one process.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_cuda_ready.py [--repeats 7] [--threads 1]
        [--baseline-rev main]

Every case times a before (A) and an after (B) implementation in alternation (A, B, A, B ...)
in this one process, after one warm-up each, and reports the medians and the ratio A / B, so
that the load of a shared machine hits both sides alike. "Before" code is the file of
``--baseline-rev`` (git) imported under another module name, or the reference kept in-tree:

* sparse conv (item 6): a level of the LiDAR teacher's encoder (2 SparseBasicBlocks = 4
  SubMConv3d 3^3 + one strided SparseConv3d 3^3 s2) forward + backward on ~30 000 clustered
  sites, 32 channels: ``index_put_(accumulate=True)`` scatter (baseline module) vs
  ``index_add_`` (now); kernel maps rebuilt every run (fresh tensor);
* CenterHead targets (item 7): the per-box loop (``get_targets_reference``) vs the vectorised
  ``get_targets`` on the paper 128 x 128 grid, B = 4 with 40 and 120 boxes per sample;
* images (item 8): per batch of B = 4 samples of F x 6 images 256 x 704: float32 normalisation
  in the loader + stack (before) vs uint8 stack + normalisation on the "device" (CPU here),
  and the bytes that are pinned and copied per batch;
* voxel pooling (items 1, 11): the fast pooling of ``--baseline-rev`` vs now (autocast guard,
  no ``nonzero`` / ``bincount``): forward + backward at the paper shapes (B = 1, 6 cameras,
  D = 112, 16 x 44, C = 80), to show the fp32 guard costs nothing.

Prints a Markdown table; ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def load_baseline(rev: str, rel_path: str, name: str):
    """Import ``rel_path`` as it is at git revision ``rev`` under module name ``name``."""
    text = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:{rel_path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def ab(a: Callable[[], object], b: Callable[[], object], repeats: int) -> dict[str, float]:
    a()
    b()
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t0)
    ma, mb = statistics.median(ta), statistics.median(tb)
    return {"before_ms": 1e3 * ma, "after_ms": 1e3 * mb, "ratio": ma / mb}


# -- item 6 ----------------------------------------------------------------------------------


def clustered_sites(shape: tuple[int, int, int], count: int, seed: int) -> torch.Tensor:
    d, h, w = shape
    g = torch.Generator().manual_seed(seed)
    n = count * 2
    r = (0.05 + 0.95 * torch.rand(n, generator=g) ** 1.5) * (min(h, w) / 2)
    a = 2 * math.pi * torch.rand(n, generator=g)
    zyx = torch.stack(
        [
            (d * 0.4 + torch.randn(n, generator=g)).clamp(0, d - 1),
            h / 2 + r * a.sin(),
            w / 2 + r * a.cos(),
        ],
        1,
    ).long()
    zyx = torch.maximum(
        torch.minimum(zyx, torch.tensor([d - 1, h - 1, w - 1])), torch.zeros(3).long()
    )
    zyx = torch.unique(zyx, dim=0)
    zyx = zyx[torch.randperm(len(zyx), generator=g)[:count]]
    return torch.cat([torch.zeros(len(zyx), 1, dtype=torch.long), zyx], 1)


def case_sparse_conv(rev: str, repeats: int) -> dict:
    from labeldistill.ops import sparse_conv as new

    old = load_baseline(rev, "src/labeldistill/ops/sparse_conv.py", "_old_sparse_conv")
    shape, c = (21, 400, 400), 32
    idx = clustered_sites(shape, 30000, seed=1)
    feats = torch.randn(len(idx), c)

    def level(mod):
        torch.manual_seed(0)
        return mod.SparseSequential(
            mod.SparseBasicBlock(c, backend="torch"),
            mod.SparseBasicBlock(c, backend="torch"),
            mod.SparseConv3d(c, c, 3, 2, 1, backend="torch"),
        )

    net_old, net_new = level(old), level(new)
    net_new.load_state_dict(net_old.state_dict())

    def run(mod, net):
        def fn() -> None:
            x = feats.clone().requires_grad_(True)
            y = net(mod.SparseTensor(x, idx, shape, 1))
            y.features.square().sum().backward()

        return fn

    with torch.no_grad():
        a = net_old(old.SparseTensor(feats, idx, shape, 1)).features
        b = net_new(new.SparseTensor(feats, idx, shape, 1)).features
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    out = ab(run(old, net_old), run(new, net_new), repeats)
    out["what"] = f"encoder level fwd+bwd, {len(idx)} sites, C={c}: index_put_ -> index_add_"
    return out


# -- item 7 ----------------------------------------------------------------------------------


def case_targets(boxes_per_sample: int, repeats: int) -> dict:
    from labeldistill.config import GridConfig, HeadConfig
    from labeldistill.models.center_head import CenterHead

    head = CenterHead(8, GridConfig(), HeadConfig())
    g = torch.Generator().manual_seed(0)
    boxes, labels = [], []
    for _ in range(4):
        bx = torch.zeros(boxes_per_sample, 9)
        bx[:, :2] = torch.rand(boxes_per_sample, 2, generator=g) * 100 - 50
        bx[:, 3:6] = torch.rand(boxes_per_sample, 3, generator=g) * 4 + 0.5
        boxes.append(bx)
        labels.append(torch.randint(0, 10, (boxes_per_sample,), generator=g))
    out = ab(
        lambda: head.get_targets_reference(boxes, labels),
        lambda: head.get_targets(boxes, labels),
        repeats,
    )
    out["what"] = f"CenterHead targets, 4 x {boxes_per_sample} boxes, 128x128: loop -> vectorised"
    return out


# -- item 8 ----------------------------------------------------------------------------------


def case_images(frames: int, repeats: int) -> dict:
    import numpy as np
    from PIL import Image

    from labeldistill.config import DataConfig
    from labeldistill.data.dataset import image_uint8, normalize_image
    from labeldistill.ops.image_norm import normalize_images

    cfg = DataConfig()
    rng = np.random.default_rng(0)
    pils = [Image.fromarray(rng.integers(0, 256, (256, 704, 3), dtype=np.uint8)) for _ in range(6)]
    b = 4

    def before() -> torch.Tensor:
        samples = []
        for _ in range(b):
            imgs = torch.empty(frames, 6, 3, 256, 704)
            for f in range(frames):
                for c in range(6):
                    normalize_image(pils[c], cfg, out=imgs[f, c])
            samples.append(imgs)
        return torch.stack(samples)

    def after() -> torch.Tensor:
        samples = []
        for _ in range(b):
            imgs = torch.empty(frames, 6, 3, 256, 704, dtype=torch.uint8)
            for f in range(frames):
                for c in range(6):
                    image_uint8(pils[c], cfg, out=imgs[f, c])
            samples.append(imgs)
        return normalize_images(torch.stack(samples), cfg.img_mean, cfg.img_std)

    assert torch.equal(before(), after())
    out = ab(before, after, repeats)
    n = b * frames * 6 * 3 * 256 * 704
    out["what"] = (
        f"B=4 x F={frames} x 6 images 256x704, loader tensor work + stack (+ normalise): "
        f"{4 * n / 2**20:.1f} MiB fp32 -> {n / 2**20:.1f} MiB uint8 per batch to pin and copy"
    )
    return out


# -- items 1, 11 -----------------------------------------------------------------------------


def case_pooling(rev: str, repeats: int) -> dict:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_voxel_pool import camera_rig
    from labeldistill.config import GridConfig
    from labeldistill.models.view_transform import frustum_geometry, make_frustum
    from labeldistill.ops import voxel_pool as new

    old = load_baseline(rev, "src/labeldistill/ops/voxel_pool.py", "_old_voxel_pool")
    grid_cfg = GridConfig()
    grid = new.VoxelGrid.from_config(grid_cfg)
    old_grid = old.VoxelGrid.from_config(grid_cfg)
    rig = camera_rig()
    frustum = make_frustum((256, 704), 16, grid_cfg.d_bound)
    geom = frustum_geometry(
        frustum, rig["ego"], rig["intrinsics"], rig["ida"], torch.eye(4).view(1, 4, 4)
    )
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 6, 112, 16, 44, generator=gen)
    context = torch.randn(1, 6, 80, 16, 44, generator=gen)

    def run(fn, g):
        def inner() -> None:
            depth = logits.softmax(2).requires_grad_(True)
            ctx = context.clone().requires_grad_(True)
            fn(geom, depth, ctx, g).sum().backward()

        return inner

    with torch.no_grad():
        a = old.voxel_pool(geom, logits.softmax(2), context, old_grid)
        b = new.voxel_pool(geom, logits.softmax(2), context, grid)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-5)
    out = ab(run(old.voxel_pool, old_grid), run(new.voxel_pool, grid), repeats)
    out["what"] = "fast voxel pooling fwd+bwd, paper shapes C=80 (fp32 guard, fewer syncs)"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--baseline-rev", default="main")
    p.add_argument("--frames", type=int, default=3, help="F of the image case (2key = 3)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = [
        ("6", case_sparse_conv(args.baseline_rev, args.repeats)),
        ("7", case_targets(40, args.repeats)),
        ("7", case_targets(120, args.repeats)),
        ("8", case_images(args.frames, args.repeats)),
        ("1, 11", case_pooling(args.baseline_rev, args.repeats)),
    ]
    print(f"threads={args.threads}, repeats={args.repeats}, baseline={args.baseline_rev}")
    print("| item | case | before (ms) | after (ms) | before / after |")
    print("|---|---|---:|---:|---:|")
    for item, r in rows:
        print(
            f"| {item} | {r['what']} | {r['before_ms']:.1f} | {r['after_ms']:.1f} | "
            f"{r['ratio']:.2f}x |"
        )
    if args.json:
        args.json.write_text(json.dumps([{"item": i, **r} for i, r in rows], indent=2))


if __name__ == "__main__":
    main()
