"""Sparse 3D convolution (pure-torch backend) vs the dense ``Conv3d`` reference on CPU.

    .venv/bin/python benchmarks/bench_sparse_conv.py [--repeats 5] [--threads 0]

Cases (each measured in a fresh subprocess so that peak RSS is per case; time = median of
``--repeats`` runs after one warm-up, kernel maps rebuilt every run):

* "dense-feasible" grid 41 x 256 x 256 with 20 000 active sites (clustered like LiDAR: ground
  plane + objects), 16 channels: SubMConv3d 3^3 and SparseConv3d 3^3 stride 2 pad 1 vs
  ``F.conv3d`` on the dense grid (the dense reference computes every cell; the sparse result
  equals it at the active sites, tests/ops/test_sparse_conv.py);
* the paper grid 41 x 1024 x 1024 with ~40 000 and ~80 000 active sites: sparse only (a dense
  16-channel fp32 grid alone would be 2.7 GB, a dense conv3d there is impractical on CPU);
  the kernel-map build time is reported separately.

Peak memory = peak RSS of the case's process minus its RSS after the inputs were built.
Prints a Markdown table.
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
import torch.nn.functional as F

from labeldistill.ops.sparse_conv import (
    SparseConv3d,
    SparseTensor,
    SubMConv3d,
    convert_weight,
    strided_kernel_map,
    submanifold_kernel_map,
)


def clustered_sites(shape: tuple[int, int, int], count: int, seed: int) -> torch.Tensor:
    """[~count, 4] unique (b, z, y, x): half near a ground plane, half in object-sized blobs."""
    d, h, w = shape
    g = torch.Generator().manual_seed(seed)
    n = count * 2
    r = (0.05 + 0.95 * torch.rand(n // 2, generator=g) ** 1.5) * (min(h, w) / 2)
    a = 2 * math.pi * torch.rand(n // 2, generator=g)
    ground = torch.stack(
        [
            (d * 0.4 + torch.randn(n // 2, generator=g)).clamp(0, d - 1),
            h / 2 + r * torch.sin(a),
            w / 2 + r * torch.cos(a),
        ],
        1,
    )
    centers = torch.rand(60, 3, generator=g) * torch.tensor([d * 0.3, h, w]) + torch.tensor(
        [d * 0.4, 0, 0]
    )
    which = torch.randint(0, 60, (n - n // 2,), generator=g)
    ext = torch.tensor([d * 0.3, h / 25, w / 50])
    objs = centers[which] + (torch.rand(n - n // 2, 3, generator=g) - 0.5) * ext
    zyx = torch.cat([ground, objs]).long()
    zyx = torch.maximum(
        torch.minimum(zyx, torch.tensor([d - 1, h - 1, w - 1])), torch.zeros(3, dtype=torch.long)
    )
    zyx = torch.unique(zyx, dim=0)
    zyx = zyx[torch.randperm(len(zyx), generator=g)[:count]]
    return torch.cat([torch.zeros(len(zyx), 1, dtype=torch.long), zyx], 1)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(case: dict) -> dict:
    """Run one case in this process; returns median seconds and peak extra memory (MB)."""
    if case["threads"]:
        torch.set_num_threads(case["threads"])
    shape = tuple(case["shape"])
    torch.manual_seed(0)
    idx = clustered_sites(shape, case["sites"], seed=1)
    c = case["channels"]
    feats = torch.randn(len(idx), c)
    kind = case["kind"]
    stride = 1 if kind.endswith("subm") else 2
    if kind.startswith("dense"):
        dense = SparseTensor(feats, idx, shape, 1).to_dense()
        weight = torch.randn(c, c, 3, 3, 3) * 0.05

        def fn() -> None:
            F.conv3d(dense, weight, None, stride, 1)
    else:
        conv = (
            SubMConv3d(c, c, 3, backend="torch")
            if stride == 1
            else SparseConv3d(c, c, 3, 2, 1, backend="torch")
        )
        x0 = SparseTensor(feats, idx, shape, 1)
        assert convert_weight(conv.weight, "ours", "torch").shape == (c, c, 3, 3, 3)

        if kind.startswith("map"):

            def fn() -> None:
                if stride == 1:
                    submanifold_kernel_map(idx, shape, (3, 3, 3))
                else:
                    strided_kernel_map(idx, shape, (3, 3, 3), (2, 2, 2), (1, 1, 1))
        else:

            def fn() -> None:
                conv(SparseTensor(x0.features, x0.indices, shape, 1))  # fresh cache: map rebuilt

    base = _rss_mb()
    times, cpu = [], []
    with torch.no_grad():
        fn()
        for _ in range(case["repeats"]):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return {
        "seconds": statistics.median(times),
        "cpu": statistics.median(cpu),
        "peak_mb": max(0.0, _peak_mb() - base),
        "sites": len(idx),
    }


def _subprocess(case: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(case)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--case", type=str, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return

    rows = []
    small = {"shape": [41, 256, 256], "sites": 20000, "channels": 16, "threads": args.threads}
    for conv in ("subm", "strided"):
        dense = _subprocess(
            {**small, "kind": f"dense_{conv}", "repeats": max(1, min(3, args.repeats))}
        )
        sparse = _subprocess({**small, "kind": f"sparse_{conv}", "repeats": args.repeats})
        rows.append(("41x256x256", sparse["sites"], conv, "dense F.conv3d", dense))
        rows.append(
            (
                "41x256x256",
                sparse["sites"],
                conv,
                "sparse (torch)",
                sparse,
                dense["cpu"] / sparse["cpu"],
            )
        )
    for sites in (40000, 80000):
        big = {"shape": [41, 1024, 1024], "sites": sites, "channels": 16, "threads": args.threads}
        for conv in ("subm", "strided"):
            kmap = _subprocess({**big, "kind": f"map_{conv}", "repeats": args.repeats})
            sparse = _subprocess({**big, "kind": f"sparse_{conv}", "repeats": args.repeats})
            rows.append(("41x1024x1024", sparse["sites"], conv, "kernel map only", kmap))
            rows.append(("41x1024x1024", sparse["sites"], conv, "sparse (torch)", sparse))

    threads = args.threads or torch.get_num_threads()
    print(f"torch {torch.__version__}, threads {threads}, 16 -> 16 channels, 3^3")
    print(
        "| grid (D x H x W) | active sites | conv | implementation | median time (ms) "
        "| CPU time (ms) | peak extra RSS (MB) | dense / sparse CPU time |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        grid, sites, conv, impl, res = row[:5]
        ratio = f"{row[5]:.1f}x" if len(row) > 5 else ""
        ms, cpu, mb = res["seconds"] * 1e3, res["cpu"] * 1e3, res["peak_mb"]
        print(f"| {grid} | {sites} | {conv} | {impl} | {ms:.1f} | {cpu:.1f} | {mb:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
