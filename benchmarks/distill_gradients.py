"""Where LabelDistill's gradient goes, and whether the teachers sit in the student's frame
(issue 10: "if LabelDistill does not beat the baseline, find out why").

On training batches of the accuracy benchmark's set (augmented as in training), with the
benchmark's teachers, stage-0 backbone and ``labeldistill_tiny`` config (``--budget``), either at
initialisation (default) or from a trained LabelDistill checkpoint (``--ckpt``, EMA weights):

1. **Frame check.** For the LiDAR teacher's heatmaps and for both teachers' level-0 feature maps:
   the mean at GT object cells (the student's own detection targets, the same cells the feature
   losses weight) against the mean elsewhere, for the targets as they are and for three wrong
   frames (transposed, x flipped, y flipped). A teacher in the student's frame scores far higher
   as it is than in any wrong frame.
2. **Gradient shares.** Every weighted loss term's gradient norm over the trainable student
   parameters (by part: image neck + depth net, BEV trunk + neck + head), and the cosine between
   the gradient of the two feature terms together and that of the detection terms, over the
   student parameters both reach.

    .venv/bin/python benchmarks/distill_gradients.py --batches 8
    .venv/bin/python benchmarks/distill_gradients.py --ckpt \
        benchmarks/_work/accuracy/bench-data0-sps12/seed0/runs/labeldistill_tiny/checkpoints/last.ckpt

Writes ``<set dir>/distill_gradients-<tag>.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from labeldistill.checkpoint.weights import load_weights
from labeldistill.models.distill import heatmap_weights, weighted_feature_loss
from labeldistill.recipes.budgets import BENCH_DATA, BUDGETS
from labeldistill.recipes.pipeline import stage_config
from labeldistill.training.backbone_pretrain import BACKBONE_FILE
from labeldistill.training.datamodule import StageDataModule
from labeldistill.training.stage_module import StageModule

#: Wrong frames of a [..., Y, X] map: the check's controls.
FRAMES = {
    "as is": lambda m: m,
    "transposed": lambda m: m.transpose(-1, -2),
    "x flipped": lambda m: m.flip(-1),
    "y flipped": lambda m: m.flip(-2),
}


def contrast(value: Tensor, mask: Tensor) -> float:
    """mean(value at mask) / mean(value elsewhere); value, mask: [B, 1, Y, X]."""
    inside = value[mask].mean()
    outside = value[~mask].mean()
    return float(inside / outside.clamp(min=1e-12))


def frame_check(out: Any, targets: Any) -> dict[str, dict[str, float]]:
    """Contrast of each teacher map at the GT object cells, per frame (see the module doc)."""
    gt = torch.cat(targets.heatmaps, dim=1)  # [B, K, Y, X]
    rows: dict[str, dict[str, float]] = {}
    if out.lidar is not None:
        prob = torch.cat([t.heatmap for t in out.lidar.head.tasks], dim=1).float().sigmoid()
        # per class: the teacher's probability at the class's own GT peaks vs elsewhere
        peaks = gt.eq(1)
        rows["LiDAR heatmap (at GT centres)"] = {
            name: float(prob[f(peaks)].mean() / prob[~f(peaks)].mean().clamp(min=1e-12))
            for name, f in FRAMES.items()
        }
        energy = out.lidar.feats[0].float().pow(2).sum(1, keepdim=True)
        rows["LiDAR features level 0"] = _energy_rows(energy, gt)
    if out.label_feats is not None:
        energy = out.label_feats[0].float().pow(2).sum(1, keepdim=True)
        rows["label features level 0"] = _energy_rows(energy, gt)
    return rows


def _energy_rows(energy: Tensor, gt: Tensor) -> dict[str, float]:
    support = gt.sum(1, keepdim=True) > 0  # the label loss's weight support (binary W0)
    return {name: contrast(energy, f(support)) for name, f in FRAMES.items()}


def parts(module: StageModule) -> dict[str, list[nn.Parameter]]:
    """Trainable student parameters by part."""
    student = module.model.student
    bb = student.backbone
    image = [p for n, p in bb.named_parameters() if not n.startswith("img_backbone.")]
    groups = {
        "image neck + depth net": image,
        "BEV trunk + neck + head": list(student.head.parameters()),
        "image backbone": list(bb.img_backbone.parameters()),
    }
    return {k: [p for p in v if p.requires_grad] for k, v in groups.items()}


def grads_of(loss: Tensor, params: list[nn.Parameter]) -> list[Tensor]:
    got = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(got, params)]


def flat(gs: Iterable[Tensor]) -> Tensor:
    return torch.cat([g.reshape(-1) for g in gs])


def part_norms(g: list[Tensor], groups: dict[str, list[nn.Parameter]]) -> dict[str, float]:
    """Gradient norm per part; ``g`` lists the gradients of the groups' parameters in order."""
    row, i = {}, 0
    for part, ps in groups.items():
        row[part] = float(flat(g[i : i + len(ps)]).norm())
        i += len(ps)
    return row


def measure(module: StageModule, batch: Any) -> dict[str, Any]:
    model = module.model
    head = model.student.head
    targets = head.get_targets(batch.gt_boxes, batch.gt_labels)
    losses = module.compute_losses(batch)
    groups = {k: v for k, v in parts(module).items() if v}
    everything = [p for v in groups.values() for p in v]
    norms: dict[str, dict[str, float]] = {}
    flats: dict[str, Tensor] = {}
    for name, value in losses.terms.items():
        g = grads_of(value, everything)
        flats[name] = flat(g)
        row = part_norms(g, groups)
        row["value"] = float(value.detach())
        norms[name] = row
    det = [v for k, v in flats.items() if k.startswith("det_")]
    feat = [v for k, v in flats.items() if k.endswith("_feat")]
    cosine = (
        float(torch.nn.functional.cosine_similarity(sum(det), sum(feat), dim=0))
        if det and feat
        else math.nan
    )
    # the feature terms level by level (a second forward: the level-0 slices of S0 reach the
    # image-side network, the level-1 slices of S1 only the BEV trunk's first layer and below)
    out = model.forward_batch(batch)
    d = module.cfg.distill
    pairs = []
    if out.lidar is not None and out.lidar_adapted is not None:
        pairs.append(("lidar_feat", d.lidar_feat_weight, out.lidar.feats, out.lidar_adapted, False))
    if out.label_feats is not None and out.label_adapted is not None:
        pairs.append(("label_feat", d.label_feat_weight, out.label_feats, out.label_adapted, True))
    for name, weight, teacher, adapted, binary in pairs:
        w = heatmap_weights(targets, binary)
        for level in (0, 1):
            value = weight * weighted_feature_loss(
                teacher[level].detach(), adapted[level], w[level]
            )
            g = grads_of(value, everything)
            row = part_norms(g, groups)
            row["value"] = float(value.detach())
            norms[f"{name} level {level}"] = row
    return {"terms": norms, "cos_det_feat": cosine, "frames": frame_check(out, targets)}


def mean_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample std over batches of every number in the nested dicts."""
    first = rows[0]
    if isinstance(first, dict):
        return {k: mean_of([r[k] for r in rows]) for k in first}
    values = [float(r) for r in rows]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std}


def tables(summary: dict[str, Any]) -> str:
    terms = summary["terms"]
    part_names = [k for k in next(iter(terms.values())) if k != "value"]
    head = ["term", "value", *(f"|grad| {p}" for p in part_names)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in terms.items():
        cells = [name, f"{row['value']['mean']:.3g}"]
        cells += [f"{row[p]['mean']:.3g} ± {row[p]['std']:.2g}" for p in part_names]
        lines.append("| " + " | ".join(cells) + " |")
    c = summary["cos_det_feat"]
    lines.append(f"\ncos(grad det, grad feat) = {c['mean']:.3f} ± {c['std']:.3f}\n")
    head = ["map (contrast at GT cells)", *FRAMES]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in summary["frames"].items():
        lines.append("| " + " | ".join([name, *(f"{row[f]['mean']:.2f}" for f in FRAMES)]) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/_work/accuracy")
    p.add_argument("--budget", default="bench", choices=["bench"])
    p.add_argument("--data-seed", type=int, default=BENCH_DATA.data_seed)
    p.add_argument("--samples-per-scene", type=int, default=BENCH_DATA.samples_per_scene)
    p.add_argument("--config", default="labeldistill", help="budget stage key of the student")
    p.add_argument("--ckpt", default=None, help="trained checkpoint (default: initialisation)")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--seed", type=int, default=100, help="batch order / init (not a bench seed)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], help="extra config override")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    data = out / f"data-{args.data_seed}-{args.samples_per_scene}"
    set_dir = out / f"{args.budget}-data{args.data_seed}-sps{args.samples_per_scene}"
    teachers = set_dir / "teachers" / "runs"
    backbone = teachers / "backbone_pretrain" / BACKBONE_FILE
    for need in (data, backbone):
        if not need.exists():
            raise SystemExit(f"error: {need} not found: run benchmarks/accuracy.py first")
    budget = BUDGETS[args.budget]
    assert budget.data is not None
    ckpts = {
        "lidar_ckpt": teachers / "centerpoint_tiny" / "checkpoints" / "last.ckpt",
        "label_ckpt": teachers / "labeldistill_step1_tiny" / "checkpoints" / "last.ckpt",
    }
    extra = [
        *budget.data.overrides(),
        "data.num_workers=0",
        "student.image_backbone.pretrained=true",
        f"student.image_backbone.pretrained_path={backbone}",
        *args.set,
    ]
    cfg = stage_config(budget, args.config, data, out / "_diag", args.seed, ckpts, extra)
    module = StageModule(cfg)
    module.init_weights_for_training()
    tag = "init"
    if args.ckpt:
        load_weights(module.model, args.ckpt, prefer_ema=True)
        tag = Path(args.ckpt).parents[1].name + f"-{Path(args.ckpt).parents[3].name}"
    module.model.train()
    dm = StageDataModule(cfg, needs_lidar=module.needs_lidar, needs_depth=True)
    dm.setup("fit")
    rows = []
    for i, batch in enumerate(dm.train_dataloader()):
        if i >= args.batches:
            break
        rows.append(measure(module, batch))
    summary = mean_of(rows)
    summary["meta"] = {"ckpt": args.ckpt, "batches": len(rows), "config": cfg.name}
    path = set_dir / f"distill_gradients-{cfg.name}-{tag}.json"
    path.write_text(json.dumps(summary, indent=1))
    print(f"{cfg.name}, {tag}, {len(rows)} training batches of {cfg.data.batch_size}:\n")
    print(tables(summary))
    print(f"\n-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
