"""``labeldistill pretrain-backbone``: stage 0, the student's ResNet pretrained on per-pixel
object classes of the synthetic camera renders (:mod:`labeldistill.models.seg_pretrain`).

Input: a synthetic set generated with ``--segmentation`` (``segmentation/<CAM>/<name>.png``
beside every camera image) and prepared. Every camera image of the train split is one training
example, augmented with the student config's own image augmentation (resize / crop / flip /
rotate, ``data.ida_aug``; nearest resampling for the class map) and normalised as the student
normalises it, so the backbone sees what the student will see.

Output (``out_dir``): ``backbone.safetensors`` (the ResNet in torchvision layout: give it to
every camera student with ``--set student.image_backbone.pretrained=true --set
student.image_backbone.pretrained_path=<file>``), ``metrics.json`` (per-class IoU on the val
split's images, the loss curve, the time). Written atomically; an existing ``backbone
.safetensors`` is reused by :func:`pretrain_backbone` unless ``fresh``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from labeldistill.checkpoint.weights import save_safetensors
from labeldistill.config import DataConfig, ExperimentConfig
from labeldistill.data import augment
from labeldistill.data.dataset import normalize_image
from labeldistill.data.infos import info_path, load_infos
from labeldistill.data.readers import load_image
from labeldistill.errors import DataError, UserError
from labeldistill.io import atomic_write_text
from labeldistill.models.seg_pretrain import SegmentationNet, confusion_matrix, iou_per_class
from labeldistill.nuscenes_schema import CAMERA_CHANNELS
from labeldistill.structures import CLASSES
from labeldistill.synth.camera import segmentation_path

log = logging.getLogger(__name__)

#: Classes of the segmentation maps: background + the 10 detection classes.
SEG_CLASSES: tuple[str, ...] = ("background", *CLASSES)
BACKBONE_FILE = "backbone.safetensors"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class PretrainConfig:
    """Stage-0 training settings (the network is the config's image backbone)."""

    steps: int = 600
    batch_size: int = 8  # camera images per step
    lr: float = 2.0e-3
    weight_decay: float = 1.0e-2
    warmup_steps: int = 50  # linear warm-up, then cosine to 0
    background_weight: float = 0.2
    decoder_channels: int = 64
    num_workers: int = 2
    seed: int = 0
    val_images: int = 240  # camera images of the val split scored at the end (0: none)

    def validate(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"pretrain-backbone --{name.replace('_', '-')} must be >= 1")
        if self.lr <= 0 or self.num_workers < 0 or self.val_images < 0:
            raise UserError("pretrain-backbone: lr must be > 0, workers and val images >= 0")


class SegmentationImages(Dataset):
    """(image, class map) of every camera of every sample of ``infos``.

    Item i -> (image [3, H, W] float32 normalised as the student, target [H, W] int64 in
    [0, 11)). Augmented with ``data_cfg.ida_aug`` when ``train`` (per-item rng from
    (seed, epoch, i)), else the student's test-time resize and crop.
    """

    def __init__(
        self, infos: list[dict], dataroot: str | Path, data_cfg: DataConfig, train: bool, seed: int
    ) -> None:
        self.items = [(i, cam) for i in range(len(infos)) for cam in CAMERA_CHANNELS]
        self.infos = infos
        self.root = Path(dataroot)
        self.cfg = data_cfg
        self.train = train
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> tuple[Tensor, Tensor]:
        i, cam = self.items[idx]
        filename = self.infos[i]["cam_infos"][cam]["filename"]
        img = load_image(self.root / filename)
        seg_file = self.root / segmentation_path(filename)
        if not seg_file.is_file():
            raise DataError(
                f"class map {seg_file} is missing: generate the set with `labeldistill synth "
                "--segmentation` (stage 0 needs the per-pixel classes of the renders)"
            )
        with Image.open(seg_file) as f:
            seg = f.convert("L").convert("P")  # mode P: every resampling below is nearest
        if seg.size != img.size:
            raise DataError(f"class map {seg_file} is {seg.size}, its image {img.size}: regenerate")
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        params = augment.sample_ida(rng, self.cfg, img.width, img.height, self.train)
        image = normalize_image(augment.apply_ida_image(img, params), self.cfg)
        target = np.array(augment.apply_ida_image(seg, params), dtype=np.int64)
        return image, torch.from_numpy(target)


@dataclass
class PretrainResult:
    """Where the backbone went, its val IoUs and the loss curve."""

    backbone: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def _lr_factor(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))


def _infos(exp: ExperimentConfig, split: str) -> list[dict]:
    path = info_path(exp.data.dataroot, split)
    infos = load_infos(path)
    if not infos:
        raise DataError(f"info file {path} holds no sample: prepare a non-empty split")
    return infos


def evaluate_segmentation(
    net: SegmentationNet, dataset: Dataset, batch_size: int, limit: int
) -> dict[str, Any]:
    """Per-class IoU (SEG_CLASSES order) and mean IoU over the object classes present, on the
    first ``limit`` items of ``dataset`` (spread evenly over it)."""
    n = len(dataset)  # type: ignore[arg-type]
    idx = np.unique(np.linspace(0, n - 1, min(limit, n)).round().astype(int)).tolist()
    device = next(net.parameters()).device
    conf = torch.zeros(len(SEG_CLASSES), len(SEG_CLASSES), dtype=torch.int64, device=device)
    net.eval()
    with torch.no_grad():
        for start in range(0, len(idx), batch_size):
            items = [dataset[j] for j in idx[start : start + batch_size]]
            x = torch.stack([a for a, _ in items]).to(device)
            y = torch.stack([b for _, b in items]).to(device)
            pred = net(x).logits.argmax(1)
            conf += confusion_matrix(pred, y, len(SEG_CLASSES))
    iou = iou_per_class(conf.cpu())
    objects = iou[1:][~torch.isnan(iou[1:])]
    return {
        "iou": {
            c: (None if math.isnan(v) else round(float(v), 4)) for c, v in zip(SEG_CLASSES, iou)
        },
        "mIoU_objects": float(objects.mean()) if len(objects) else 0.0,
        "pixel_accuracy": float(conf.diagonal().sum() / conf.sum().clamp(min=1)),
        "images": len(idx),
    }


def pretrain_backbone(
    exp: ExperimentConfig,
    out_dir: str | Path,
    cfg: PretrainConfig,
    fresh: bool = False,
    device: str = "cpu",
) -> PretrainResult:
    """Train stage 0 for ``exp``'s image backbone on ``exp.data`` (train split; IoU on the val
    split) and write ``out_dir/backbone.safetensors`` and ``metrics.json``."""
    cfg.validate()
    out = Path(out_dir)
    backbone_file = out / BACKBONE_FILE
    metrics_file = out / METRICS_FILE
    if not fresh and backbone_file.is_file() and metrics_file.is_file():
        log.info("pretrain-backbone: reusing %s", backbone_file)
        return PretrainResult(backbone_file, json.loads(metrics_file.read_text()))
    torch.manual_seed(cfg.seed)
    bb_cfg = exp.student.image_backbone
    net = SegmentationNet(bb_cfg, len(SEG_CLASSES), cfg.decoder_channels).to(device)
    train_set = SegmentationImages(
        _infos(exp, exp.data.train_split), exp.data.dataroot, exp.data, True, cfg.seed
    )
    val_set = SegmentationImages(
        _infos(exp, exp.data.val_split), exp.data.dataroot, exp.data, False, cfg.seed
    )
    opt = torch.optim.AdamW(
        [p for p in net.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    curve: list[list[float]] = []  # [step, loss], about 50 points over the run
    every = max(1, cfg.steps // 50)
    start = time.time()
    step, epoch, running = 0, 0, 0.0
    bar = tqdm(total=cfg.steps, desc="pretrain-backbone", unit="step")
    net.train()
    while step < cfg.steps:
        train_set.epoch = epoch
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        loader = DataLoader(
            train_set,
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=cfg.num_workers,
            generator=gen,
            persistent_workers=False,
        )
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = net.loss(net(x), y, cfg.background_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            value = float(loss.detach())
            running = value if step == 0 else 0.9 * running + 0.1 * value
            if step % every == 0 or step == cfg.steps - 1:
                curve.append([step, round(value, 5)])
            bar.set_postfix(loss=f"{running:.3f}")
            bar.update()
            step += 1
            if step >= cfg.steps:
                break
        epoch += 1
    bar.close()
    train_s = time.time() - start
    metrics: dict[str, Any] = {
        "config": exp.name,
        "pretrain": asdict(cfg),
        "train_images": len(train_set),
        "epochs": epoch,
        "train_seconds": round(train_s, 1),
        "loss_curve": curve,
    }
    if cfg.val_images:
        metrics["val"] = evaluate_segmentation(net, val_set, cfg.batch_size, cfg.val_images)
        log.info(
            "pretrain-backbone: val mIoU (objects) %.3f on %d images",
            metrics["val"]["mIoU_objects"],
            metrics["val"]["images"],
        )
    save_safetensors(
        backbone_file,
        net.backbone.state_dict(),
        {"kind": "raw", "format": "torchvision-resnet", "depth": str(bb_cfg.depth)},
    )
    atomic_write_text(metrics_file, json.dumps(metrics, indent=1))
    log.info("pretrain-backbone: wrote %s (%.1f min)", backbone_file, train_s / 60)
    return PretrainResult(backbone_file, metrics)
