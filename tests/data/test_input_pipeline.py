"""Issue 13 item 8: the input pipeline fit for CUDA (proven on CPU): uint8 images normalised on
the device give bit-identical network inputs, ``Batch.pin_memory`` is what the DataLoader's
pinning calls, and the Lightning transfer copies with ``non_blocking=True``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from labeldistill.config import DataConfig, load_config
from labeldistill.data.dataset import build_dataset, collate
from labeldistill.ops.image_norm import normalize_images
from labeldistill.structures import Batch


def _data_cfg(root: Path, **kw) -> DataConfig:
    base = {
        "dataroot": str(root),
        "key_idxes": (-1,),
        "image_size": (64, 192),
        "return_depth": False,
    }
    base.update(kw)
    return DataConfig(**base)


@pytest.mark.parametrize("bgr", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_uint8_images_normalised_on_device_are_bit_identical(
    synthetic_root: Path, bgr: bool, train: bool
) -> None:
    cfg = _data_cfg(synthetic_root, bgr_quirk=bgr)
    floats = build_dataset(cfg, "mini_val", train=train, seed=3)
    bytes_ = build_dataset(cfg, "mini_val", train=train, seed=3, uint8_images=True)
    for i in (0, 5):
        a, b = floats[i], bytes_[i]
        assert a.imgs.dtype == torch.float32 and b.imgs.dtype == torch.uint8
        assert b.imgs.element_size() * 4 == a.imgs.element_size()
        assert torch.equal(normalize_images(b.imgs, cfg.img_mean, cfg.img_std), a.imgs)
        assert torch.equal(a.ida, b.ida) and torch.equal(a.gt_boxes, b.gt_boxes)


def test_normalize_images_hand_values() -> None:
    imgs = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 1, 2)
    out = normalize_images(imgs, (10.0, 20.0, 30.0), (2.0, 4.0, 5.0))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 1, 2)
    assert out[0, :, 0, 0].tolist() == [-5.0, 27.0, 45.0]
    floats = imgs.float()
    assert torch.equal(normalize_images(floats, (10.0, 20.0, 30.0), (2.0, 4.0, 5.0)), out)
    assert torch.equal(floats, imgs.float())  # a float input is not modified in place


def test_student_takes_uint8_images(synthetic_root: Path) -> None:
    """The student normalises uint8 input itself: same outputs as the float32 input."""
    from labeldistill.models.build import build_student

    cfg = load_config(
        "bevdepth_tiny",
        [f"data.dataroot={synthetic_root}", "data.image_size=[64, 192]", "data.key_idxes=[]"],
    )
    data = cfg.data
    floats = collate([build_dataset(data, "mini_val", train=False)[0]])
    bytes_ = collate([build_dataset(data, "mini_val", train=False, uint8_images=True)[0]])
    model = build_student(cfg).eval()
    with torch.no_grad():
        args = (floats.ego_from_camera, floats.intrinsics, floats.ida, floats.bda)
        a = model(floats.imgs, *args)
        b = model(bytes_.imgs, *args)
    assert torch.equal(a.depth, b.depth)
    assert torch.equal(a.head.tasks[0].heatmap, b.head.tasks[0].heatmap)


def test_datamodule_ships_uint8(synthetic_root: Path) -> None:
    from labeldistill.training.datamodule import StageDataModule

    cfg = load_config(
        "bevdepth_tiny",
        [
            f"data.dataroot={synthetic_root}",
            "data.image_size=[64, 192]",
            "data.num_workers=0",
            "data.train_split=mini_val",
        ],
    )
    dm = StageDataModule(cfg, needs_lidar=False, needs_depth=True)
    assert next(iter(dm.train_dataloader())).imgs.dtype == torch.uint8
    assert next(iter(dm.val_dataloader())).imgs.dtype == torch.uint8
    off = load_config(
        "bevdepth_tiny", [f"data.dataroot={synthetic_root}", "data.uint8_images=false"]
    )
    dm = StageDataModule(off, needs_lidar=False, needs_depth=True, eval_split="mini_val")
    assert dm.eval_dataset[0].imgs.dtype == torch.float32


def _tiny_batch() -> Batch:
    return Batch(
        imgs=torch.zeros(1, 1, 6, 3, 4, 4, dtype=torch.uint8),
        ego_from_camera=torch.zeros(1, 1, 6, 4, 4),
        intrinsics=torch.zeros(1, 1, 6, 4, 4),
        ida=torch.zeros(1, 1, 6, 4, 4),
        key_from_frame=torch.zeros(1, 1, 6, 4, 4),
        bda=torch.eye(4)[None],
        timestamps=torch.zeros(1, 1, 6, dtype=torch.int64),
        gt_boxes=[torch.zeros(3, 9)],
        gt_labels=[torch.zeros(3, dtype=torch.int64)],
        metas=[],
        depth=torch.zeros(1, 6, 4, 4),
        lidar_points=None,
    )


def test_dataloader_pinning_pins_every_batch_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """DataLoader(pin_memory=True) calls ``pin_memory()`` on a batch object; without it a
    dataclass batch was returned unpinned. (No CUDA here: Tensor.pin_memory is recorded.)"""
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned: list[tuple[int, ...]] = []

    def fake_pin(self, *args, **kwargs):
        pinned.append(tuple(self.shape))
        return self.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    batch = _tiny_batch()
    out = pin_memory(batch)
    assert isinstance(out, Batch)
    assert (1, 1, 6, 3, 4, 4) in pinned and (3, 9) in pinned and (3,) in pinned
    assert len(pinned) == 10  # 7 stacked fields + depth + one GT box and label tensor
    assert out.lidar_points is None and out.imgs.dtype == torch.uint8


def test_transfer_is_non_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    from labeldistill.training.stage_module import StageModule

    calls: list[dict] = []
    original = Batch.to

    def spy(self, device, non_blocking=False):
        calls.append({"device": device, "non_blocking": non_blocking})
        return original(self, device, non_blocking)

    monkeypatch.setattr(Batch, "to", spy)
    cfg = load_config("bevdepth_tiny", ["student.image_backbone.pretrained=false"])
    module = StageModule(cfg)
    module.transfer_batch_to_device(_tiny_batch(), torch.device("cpu"), 0)
    assert calls and calls[0]["non_blocking"] is True
