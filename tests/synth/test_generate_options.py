"""Generator options of the accuracy benchmark: per-pixel class maps (stage 0) and a
``v1.0-trainval`` tree with a subset of the official scene names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labeldistill.errors import UserError
from labeldistill.synth.camera import segmentation_path
from labeldistill.synth.generate import SynthConfig, generate, scene_list

pytestmark = pytest.mark.xdist_group("synthetic_options")

TRAINVAL = SynthConfig(
    seed=5,
    samples_per_scene=2,
    image_width=160,
    image_height=90,
    version="v1.0-trainval",
    train_scenes=2,
    val_scenes=1,
    segmentation=True,
)


def test_scene_list_trainval_uses_official_names() -> None:
    from nuscenes.utils.splits import train, val

    scenes = scene_list(SynthConfig(version="v1.0-trainval", train_scenes=3, val_scenes=2))
    names = [n for n, _ in scenes]
    assert names == list(train[:3]) + list(val[:2])
    assert len({loc for _, loc in scenes}) == 4  # the four nuScenes locations, cycled
    with pytest.raises(UserError, match="1-150 val"):
        SynthConfig(version="v1.0-trainval", val_scenes=151).validate()
    with pytest.raises(UserError, match="not generated"):
        SynthConfig(version="v1.0-test").validate()


@pytest.fixture(scope="module")
def trainval_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from labeldistill.data.prepare import prepare

    root = generate(tmp_path_factory.mktemp("tv") / "nusc", TRAINVAL, workers=1)
    prepare(root, "v1.0-trainval", workers=1)
    return root


def test_trainval_tree_loads_and_splits(trainval_root: Path) -> None:
    from nuscenes.utils.splits import train, val

    from labeldistill.data.infos import info_path, load_infos

    assert (trainval_root / "v1.0-trainval" / "scene.json").is_file()
    assert not (trainval_root / "v1.0-mini").exists()
    scenes = json.loads((trainval_root / "v1.0-trainval" / "scene.json").read_text())
    assert sorted(s["name"] for s in scenes) == sorted([*train[:2], val[0]])
    assert len(load_infos(info_path(trainval_root, "train"))) == 4
    assert len(load_infos(info_path(trainval_root, "val"))) == 2


def test_trainval_gt_scores_one_with_the_devkit(trainval_root: Path, tmp_path: Path) -> None:
    """The bigger set passes the devkit's checks: the GT scored as predictions on the val
    scenes present gives AP 1 for every class that has GT there."""
    from labeldistill.evaluation.nuscenes_eval import evaluate_json
    from labeldistill.evaluation.results import gt_as_results, write_results

    res = write_results(tmp_path / "gt.json", gt_as_results(trainval_root, "v1.0-trainval", "val"))
    m = evaluate_json(trainval_root, "v1.0-trainval", "val", res, tmp_path / "eval")
    assert m["num_samples"] == 2
    present = [c for c, ap in m["per_class_AP"].items() if ap > 0]
    assert present, "the val scene has annotated objects"
    assert all(m["per_class_AP"][c] == pytest.approx(1.0) for c in present)


def test_segmentation_maps_written_beside_every_camera_image(trainval_root: Path) -> None:
    images = sorted((trainval_root / "samples").glob("CAM_*/*.jpg"))
    assert len(images) == 3 * 2 * 6
    classes: set[int] = set()
    object_pixels = 0
    for img in images:
        rel = img.relative_to(trainval_root).as_posix()
        seg_file = trainval_root / segmentation_path(rel)
        with Image.open(seg_file) as f:
            seg = np.array(f)
        with Image.open(img) as f:
            assert f.size == (seg.shape[1], seg.shape[0])
        assert seg.dtype == np.uint8 and seg.max() <= 10
        classes |= set(np.unique(seg).tolist())
        object_pixels += int((seg > 0).sum())
    assert 0 in classes and len(classes) >= 3  # background and several object classes
    total = len(images) * TRAINVAL.image_width * TRAINVAL.image_height
    assert 0.001 < object_pixels / total < 0.5
