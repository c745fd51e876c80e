"""Each stage model owns its loss: ``loss(forward_batch(batch), batch)`` sums to the weighted
sum the Lightning modules computed before (the METHOD.md 8 formula written out here by hand,
with hand-set weights), on one real synthetic sample."""

from __future__ import annotations

from pathlib import Path

import torch

from labeldistill.config import ExperimentConfig, load_config
from labeldistill.data.dataset import build_dataset, collate
from labeldistill.models.build import build_stage_model
from labeldistill.models.label_encoder import rasterize_labels
from labeldistill.structures import Batch, LossDict

FAST = ["data.num_workers=0", "data.image_size=[64, 192]", "trainer.accelerator=cpu"]
W = {"det": 0.7, "depth": 2.5, "lidar_feat": 0.35, "label_feat": 0.45, "response": 1.3}
WEIGHTS = [
    f"distill.det_weight={W['det']}",
    f"distill.depth_weight={W['depth']}",
    f"distill.lidar_feat_weight={W['lidar_feat']}",
    f"distill.label_feat_weight={W['label_feat']}",
    f"distill.response_weight={W['response']}",
]


def _cfg(name: str, root: Path) -> ExperimentConfig:
    return load_config(name, [f"data.dataroot={root}", *FAST, *WEIGHTS])


def _batch(cfg: ExperimentConfig) -> Batch:
    data_cfg = cfg.data.__class__(**{**cfg.data.__dict__, "return_lidar": True})
    ds = build_dataset(data_cfg, cfg.data.train_split, train=True, seed=0)
    batch = collate([ds[0]])
    assert batch.gt_boxes[0].shape[0] > 0, "the sample needs objects"
    return batch


def _total(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    return LossDict(model.loss(model.forward_batch(batch), batch)).total


def test_labeldistill_loss_is_the_whole_formula(synthetic_root: Path) -> None:
    cfg = _cfg("labeldistill_tiny", synthetic_root)
    model = build_stage_model(cfg).train()
    batch = _batch(cfg)
    torch.manual_seed(0)
    got = _total(model, batch)
    # the old Lightning module's computation, with the weights written out
    head = model.student.head
    targets = head.get_targets(batch.gt_boxes, batch.gt_labels)
    maps = rasterize_labels(
        batch.gt_boxes, batch.gt_labels, cfg.grid, cfg.label_encoder.rasterize, head.cfg.max_objs
    )
    torch.manual_seed(0)
    out = model.forward_train(
        batch.imgs,
        batch.ego_from_camera,
        batch.intrinsics,
        batch.ida,
        batch.bda,
        lidar_points=batch.lidar_points,
        label_maps=maps,
    )
    det = head.loss(out.student.head, targets)
    terms = {f"det_{k}": W["det"] * v for k, v in det.items()}
    terms["depth"] = W["depth"] * model.student.loss_depth(out.student, batch.depth)
    plain = model.distill_losses(
        out, targets, head.cfg.code_weights, bbox_weight=head.cfg.loss_bbox_weight
    )
    for name in ("lidar_feat", "label_feat", "response"):
        terms[name] = plain[name]  # already weighted with the config's weights
    expected = LossDict(terms).total
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0.0)
    assert set(model.loss(out, batch)) == set(terms)


def test_student_and_teacher_losses_are_weighted(synthetic_root: Path) -> None:
    for name in ("bevdepth_tiny", "centerpoint_tiny", "labeldistill_step1_tiny"):
        cfg = _cfg(name, synthetic_root)
        model = build_stage_model(cfg).train()
        batch = _batch(cfg)
        terms = model.loss(model.forward_batch(batch), batch)
        if name == "bevdepth_tiny":
            out = model(batch.imgs, batch.ego_from_camera, batch.intrinsics, batch.ida, batch.bda)
            det = model.loss_detection(out, batch.gt_boxes, batch.gt_labels)
            expected = W["det"] * (det["heatmap"] + det["bbox"])
            expected = expected + W["depth"] * model.loss_depth(out, batch.depth)
        else:
            teacher = model if name == "centerpoint_tiny" else model.lidar_teacher
            head = teacher.pts_bbox_head
            if name == "centerpoint_tiny":
                out = model(batch.lidar_points)
            else:
                maps = rasterize_labels(
                    batch.gt_boxes,
                    batch.gt_labels,
                    cfg.grid,
                    cfg.label_encoder.rasterize,
                    head.cfg.max_objs,
                )
                out = model(maps)
            det = head.loss(out.head, head.get_targets(batch.gt_boxes, batch.gt_labels))
            expected = W["det"] * det["heatmap"] + W["det"] * det["bbox"]
        torch.testing.assert_close(LossDict(terms).total, expected, rtol=1e-5, atol=1e-7)
