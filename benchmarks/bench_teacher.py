"""CenterPoint LiDAR teacher inference time per sample on CPU (paper config, torch backend).

    .venv/bin/python benchmarks/bench_teacher.py [--repeats 3] [--points 30000 250000]

For each point budget: a LiDAR-like synthetic cloud (ground rings + object blobs + -999
padding to 320 000 rows, as the dataset pads), batch 1, eval mode, ``torch.no_grad``. Median of
``--repeats`` runs after one warm-up; per-stage split: voxelisation + VFE, sparse encoder
(incl. densify), SECOND, SECOND-FPN + CenterHead. Also the tiny config of the tests
(voxel 0.4 m, base 8 channels) for scale. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from labeldistill.config import GridConfig, HeadConfig, LidarTeacherConfig
from labeldistill.models.lidar_teacher import LidarTeacher
from labeldistill.ops.voxelize import mean_voxel_features

TINY = LidarTeacherConfig(
    voxel_size=(0.4, 0.4, 0.4),
    base_channels=8,
    encoder_out_channels=16,
    encoder_channels=((8, 8, 16), (16, 16)),
    encoder_paddings=((0, 0, 1), (0, 0)),
    second_out_channels=(16, 32),
    second_layer_nums=(1, 1),
    neck_out_channels=(16, 16),
    sparse_backend="torch",
    head=HeadConfig(share_conv_channels=8, head_conv=8, init_bias=-2.19),
)


def lidar_like(num_points: int, pad_to: int, seed: int = 0) -> torch.Tensor:
    """[pad_to, 5]: half ground rings (range-biased like a spinning LiDAR), half object blobs."""
    g = torch.Generator().manual_seed(seed)
    n_ground = num_points // 2
    r = 2.0 + 50.0 * torch.rand(n_ground, generator=g) ** 2
    a = 2 * math.pi * torch.rand(n_ground, generator=g)
    z = -1.8 + 0.05 * torch.randn(n_ground, generator=g)
    ground = torch.stack([r * torch.cos(a), r * torch.sin(a), z], 1)
    n_obj = num_points - n_ground
    centers = (torch.rand(80, 3, generator=g) - 0.5) * torch.tensor([90.0, 90.0, 0.0])
    which = torch.randint(0, 80, (n_obj,), generator=g)
    size = torch.tensor([4.0, 2.0, 1.6])
    obj = (
        centers[which]
        + (torch.rand(n_obj, 3, generator=g) - 0.5) * size
        - torch.tensor([0, 0, 1.0])
    )
    xyz = torch.cat([ground, obj])
    extra = torch.stack(
        [torch.rand(num_points, generator=g) * 255, torch.rand(num_points, generator=g) * 0.45], 1
    )
    pts = torch.cat([xyz, extra], 1)
    return torch.cat([pts, torch.full((max(0, pad_to - num_points), 5), -999.0)])[None]


def timed_stages(teacher: LidarTeacher, points: torch.Tensor) -> dict[str, float]:
    out: dict[str, float] = {}
    c0 = time.process_time()
    t0 = time.perf_counter()
    vox = teacher.voxelize(points)
    feats = mean_voxel_features(vox.voxels, vox.num_points, teacher.cfg.in_channels)
    t1 = time.perf_counter()
    bev = teacher.pts_middle_encoder(feats, vox.coors, int(points.shape[0]))
    t2 = time.perf_counter()
    levels = teacher.pts_backbone(bev)
    t3 = time.perf_counter()
    teacher.decode_features(levels)
    t4 = time.perf_counter()
    out["voxelise"] = t1 - t0
    out["sparse encoder"] = t2 - t1
    out["SECOND"] = t3 - t2
    out["neck + head"] = t4 - t3
    out["total"] = t4 - t0
    out["cpu"] = time.process_time() - c0
    out["voxels"] = float(vox.coors.shape[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--points", type=int, nargs="+", default=[30000, 250000])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    grid = GridConfig()
    rows = []
    for name, cfg in (
        ("paper (voxel 0.1)", LidarTeacherConfig(sparse_backend="torch")),
        ("tiny", TINY),
    ):
        teacher = LidarTeacher(cfg, grid).eval()
        for n in args.points:
            points = lidar_like(n, 320000)
            with torch.no_grad():
                timed_stages(teacher, points)  # warm-up
                runs = [timed_stages(teacher, points) for _ in range(args.repeats)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            rows.append((name, n, med))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch 1, eval, no_grad")
    print(
        "| config | points | voxels | voxelise (s) | sparse encoder (s) | SECOND (s) "
        "| neck + head (s) | total per sample (s) | CPU time (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, n, m in rows:
        print(
            f"| {name} | {n} | {int(m['voxels'])} | {m['voxelise']:.2f} | "
            f"{m['sparse encoder']:.2f} | {m['SECOND']:.2f} | {m['neck + head']:.2f} | "
            f"{m['total']:.2f} | {m['cpu']:.2f} |"
        )


if __name__ == "__main__":
    main()
