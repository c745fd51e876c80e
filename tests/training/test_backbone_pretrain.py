"""Stage 0: the segmentation network, its targets, its training loop, and the backbone file
loading into every camera config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from labeldistill.checkpoint.pretrained import init_student_backbone, load_backbone_file
from labeldistill.config import ImageBackboneConfig, load_config, shipped_configs
from labeldistill.errors import DataError, UserError
from labeldistill.models.image_backbone import ResNetBackbone
from labeldistill.models.seg_pretrain import SegmentationNet, confusion_matrix, iou_per_class
from labeldistill.synth.camera import segmentation_path
from labeldistill.synth.generate import SynthConfig, generate
from labeldistill.training.backbone_pretrain import (
    BACKBONE_FILE,
    SEG_CLASSES,
    PretrainConfig,
    SegmentationImages,
    pretrain_backbone,
)

pytestmark = pytest.mark.xdist_group("backbone_pretrain")

SYNTH = SynthConfig(
    seed=11,
    samples_per_scene=1,
    image_width=160,
    image_height=90,
    version="v1.0-trainval",
    train_scenes=2,
    val_scenes=1,
    segmentation=True,
)
OVERRIDES = [
    "data.version=v1.0-trainval",
    "data.train_split=train",
    "data.val_split=val",
    "data.image_size=[64,160]",
    "data.ida_aug.resize_lim=[0.1,0.12]",
]


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from labeldistill.data.prepare import prepare

    root = generate(tmp_path_factory.mktemp("seg") / "nusc", SYNTH, workers=1)
    prepare(root, "v1.0-trainval", workers=1, depth=False)
    return root


def _exp(root: Path, *extra: str):
    return load_config("bevdepth_tiny", [f"data.dataroot={root}", *OVERRIDES, *extra])


def test_loss_is_weighted_cross_entropy() -> None:
    torch.manual_seed(0)
    net = SegmentationNet(ImageBackboneConfig(depth=18, pretrained=False), 11, 16)
    x = torch.randn(2, 3, 64, 96)
    out = net(x)
    assert out.logits.shape == (2, 11, 64, 96)
    target = torch.randint(0, 11, (2, 64, 96))
    target[0, :10] = 0
    loss = net.loss(out, target, background_weight=0.25)
    logp = F.log_softmax(out.logits, 1).gather(1, target[:, None])[:, 0]
    w = torch.where(target == 0, 0.25, 1.0)
    assert float(loss.detach()) == pytest.approx(float(-(w * logp).sum() / w.sum()), rel=1e-5)


def test_confusion_and_iou_hand_case() -> None:
    pred = torch.tensor([0, 1, 1, 2, 0])
    target = torch.tensor([0, 1, 2, 2, 1])
    conf = confusion_matrix(pred, target, 4)
    assert conf.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    iou = iou_per_class(conf)
    assert iou[:3].tolist() == pytest.approx([1 / 2, 1 / 3, 1 / 2])
    assert torch.isnan(iou[3])


def test_eval_items_are_the_student_crop_of_the_class_map(seg_root: Path) -> None:
    from labeldistill.data.infos import info_path, load_infos

    exp = _exp(seg_root)
    infos = load_infos(info_path(seg_root, "val"))
    ds = SegmentationImages(infos, seg_root, exp.data, train=False, seed=0)
    assert len(ds) == 6
    image, target = ds[0]
    assert image.shape == (3, 64, 160) and target.shape == (64, 160)
    seg = np.array(
        Image.open(seg_root / segmentation_path(infos[0]["cam_infos"]["CAM_FRONT"]["filename"]))
    )
    # test-time ida of a 160x90 source at 64x160: scale 1, bottom crop rows 26..90
    assert target.numpy().tolist() == seg[26:90].astype(np.int64).tolist()
    # training items are augmented but keep class values only (nearest resampling)
    ds_train = SegmentationImages(infos, seg_root, exp.data, train=True, seed=0)
    _, t = ds_train[3]
    assert set(np.unique(t.numpy()).tolist()) <= set(range(len(SEG_CLASSES)))


def test_missing_class_maps_name_the_fix(seg_root: Path, tmp_path: Path) -> None:
    from labeldistill.data.infos import info_path, load_infos

    infos = load_infos(info_path(seg_root, "val"))
    ds = SegmentationImages(infos, tmp_path, _exp(seg_root).data, train=False, seed=0)
    with pytest.raises(DataError):  # the image itself is missing under tmp_path
        ds[0]
    fake_root = tmp_path / "root"
    rel = infos[0]["cam_infos"]["CAM_FRONT"]["filename"]
    (fake_root / rel).parent.mkdir(parents=True)
    (fake_root / rel).write_bytes((seg_root / rel).read_bytes())
    ds = SegmentationImages(infos, fake_root, _exp(seg_root).data, train=False, seed=0)
    with pytest.raises(DataError, match="synth --segmentation"):
        ds[0]


def test_pretrain_learns_writes_and_reuses(seg_root: Path, tmp_path: Path) -> None:
    cfg = PretrainConfig(
        steps=30, batch_size=4, lr=2e-3, warmup_steps=5, num_workers=0, val_images=6
    )
    result = pretrain_backbone(_exp(seg_root), tmp_path / "s0", cfg)
    assert result.backbone == tmp_path / "s0" / BACKBONE_FILE and result.backbone.is_file()
    curve = [loss for _, loss in result.metrics["loss_curve"]]
    assert len(curve) == 30
    assert np.mean(curve[-5:]) < 0.75 * np.mean(curve[:3])  # the segmentation loss falls
    val = result.metrics["val"]
    assert val["images"] == 6 and 0.0 <= val["mIoU_objects"] <= 1.0
    assert set(val["iou"]) == set(SEG_CLASSES)
    # a second call reuses the finished file
    mtime = result.backbone.stat().st_mtime_ns
    again = pretrain_backbone(_exp(seg_root), tmp_path / "s0", cfg)
    assert again.backbone.stat().st_mtime_ns == mtime and again.metrics == result.metrics
    # the file holds the ResNet in torchvision layout: it loads into a fresh backbone exactly
    fresh = ResNetBackbone(ImageBackboneConfig(depth=18, pretrained=False))
    load_backbone_file(fresh, result.backbone, 18)
    from safetensors.torch import load_file

    state = load_file(str(result.backbone))
    assert set(state) == set(fresh.state_dict())
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())


def _camera_configs() -> list[str]:
    return [n for n in shipped_configs() if load_config(n).stage in ("student", "labeldistill")]


def test_backbone_file_loads_into_every_camera_config(tmp_path: Path) -> None:
    """An R18 stage-0 file loads into every R18 camera config through the config key; the
    R50 / R101 configs refuse it in one line naming the file."""
    from labeldistill.checkpoint.weights import save_safetensors

    torch.manual_seed(1)
    src = ResNetBackbone(ImageBackboneConfig(depth=18, pretrained=False))
    path = tmp_path / BACKBONE_FILE
    save_safetensors(path, src.state_dict(), {"kind": "raw"})
    names = _camera_configs()
    assert {"bevdepth_tiny", "labeldistill_tiny", "labeldistill_r50_128x128_e24_2key"} <= set(names)
    for name in names:
        cfg = load_config(
            name,
            [
                "student.image_backbone.pretrained=true",
                f"student.image_backbone.pretrained_path={path}",
            ],
        ).student.image_backbone
        target = ResNetBackbone(cfg)
        if cfg.depth == 18:
            assert init_student_backbone(target, cfg) == path
            assert torch.equal(target.layer4[1].conv2.weight, src.layer4[1].conv2.weight), name
        else:
            with pytest.raises(UserError, match=str(path)):
                init_student_backbone(target, cfg)


def test_student_module_initialises_from_the_file(tmp_path: Path) -> None:
    from labeldistill.checkpoint.weights import save_safetensors
    from labeldistill.training.stage_module import StageModule

    torch.manual_seed(2)
    src = ResNetBackbone(ImageBackboneConfig(depth=18, pretrained=False))
    path = tmp_path / "bb.safetensors"
    save_safetensors(path, src.state_dict(), {"kind": "raw"})
    cfg = load_config(
        "bevdepth_tiny",
        [
            "student.image_backbone.pretrained=true",
            f"student.image_backbone.pretrained_path={path}",
        ],
    )
    module = StageModule(cfg)
    module.init_weights_for_training()
    got = module.model.backbone.img_backbone.state_dict()
    assert all(torch.equal(got[k], v) for k, v in src.state_dict().items())
    missing = load_config(
        "bevdepth_tiny",
        [
            "student.image_backbone.pretrained=true",
            "student.image_backbone.pretrained_path=/nope.pth",
        ],
    )
    with pytest.raises(UserError, match="/nope.pth"):
        StageModule(missing).init_weights_for_training()
