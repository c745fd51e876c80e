"""Pictures of a sample: projected GT box edges land where the devkit projects them (checked on
the written PNG), the BEV panel shows boxes, LiDAR points and predictions above the threshold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from labeldistill.cli import main as cli_main
from labeldistill.errors import UserError
from labeldistill.evaluation.results import sample_meta_from_info
from labeldistill.geometry import apply, invert, transform
from labeldistill.structures import CAMERAS
from labeldistill.viz.visualize import (
    CLASS_COLORS,
    GT_COLOR,
    POINT_COLOR,
    panel_layout,
    visualize,
)


def _devkit_edges(ann: dict, cam_info: dict) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Edges (uv0, uv1, min depth) of an annotation in a camera, with the devkit's Box."""
    from nuscenes.utils.data_classes import Box
    from nuscenes.utils.geometry_utils import view_points
    from pyquaternion import Quaternion

    box = Box(ann["translation"], ann["size"], Quaternion(ann["rotation"]))
    pose, cs = cam_info["ego_pose"], cam_info["calibrated_sensor"]
    box.translate(-np.array(pose["translation"]))
    box.rotate(Quaternion(pose["rotation"]).inverse)
    box.translate(-np.array(cs["translation"]))
    box.rotate(Quaternion(cs["rotation"]).inverse)
    corners = box.corners()  # [3, 8]: 0-3 front face, 4-7 back face
    uv = view_points(corners, np.array(cs["camera_intrinsic"]), normalize=True)[:2].T
    edges = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4)]
    edges += [(0, 4), (1, 5), (2, 6), (3, 7)]
    return [(uv[a], uv[b], float(min(corners[2, a], corners[2, b]))) for a, b in edges]


def _has_color(arr: np.ndarray, xy: np.ndarray, color: tuple[int, int, int], r: int = 2) -> bool:
    x, y = int(round(xy[0])), int(round(xy[1]))
    win = arr[y - r : y + r + 1, x - r : x + r + 1].reshape(-1, 3)
    return bool((win == np.array(color)).all(axis=1).any())


def check_gt_edges(png: Path, info: dict) -> int:
    """Every GT edge wholly inside an image has the GT colour at its midpoint -> edges checked."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    arr = np.asarray(Image.open(png).convert("RGB"))
    first = info["cam_infos"][CAMERAS[0]]
    layout = panel_layout(first["width"], first["height"])
    assert arr.shape == (layout.height, layout.width, 3)
    checked = 0
    for cam in CAMERAS:
        cam_info = info["cam_infos"][cam]
        w, h = cam_info["width"], cam_info["height"]
        for ann in info["ann_infos"]:
            if category_to_detection_name(ann["category_name"]) is None:
                continue
            for uv0, uv1, depth in _devkit_edges(ann, cam_info):
                inside = all(4 <= p[0] < w - 4 and 4 <= p[1] < h - 4 for p in (uv0, uv1))
                if depth < 1.0 or not inside:
                    continue
                mid = layout.to_panel(cam, ((uv0 + uv1) / 2)[None])[0]
                assert _has_color(arr, mid, GT_COLOR), (cam, ann["token"], mid)
                checked += 1
    # the GT colour is the exception, not the rule, in the camera tiles
    tiles = arr[layout.height - 2 * layout.tile_h :, : 3 * layout.tile_w]
    frac = (tiles == np.array(GT_COLOR)).all(axis=2).mean()
    assert 0 < frac < 0.2
    return checked


def check_bev(png: Path, info: dict) -> None:
    """The BEV heading line (centre -> front) of every GT box within 50 m has the GT colour."""
    arr = np.asarray(Image.open(png).convert("RGB"))
    first = info["cam_infos"][CAMERAS[0]]
    layout = panel_layout(first["width"], first["height"])
    meta = sample_meta_from_info(info)
    ego_from_global = invert(transform(meta.ego_rotation, meta.ego_translation))
    for ann in info["ann_infos"]:
        c = apply(ego_from_global, np.array([ann["translation"]]))[0]
        if np.abs(c[:2]).max() > 50:
            continue
        from pyquaternion import Quaternion

        fwd = Quaternion(ann["rotation"]).rotate([ann["size"][1] / 4, 0.0, 0.0])
        p = apply(ego_from_global, np.array([np.array(ann["translation"]) + fwd]))[0]
        assert _has_color(arr, layout.bev_pixels(p[None, :2])[0], GT_COLOR, r=1), ann["token"]


def test_visualize_real_fixture(fixture_root: Path, tmp_path: Path) -> None:
    from labeldistill.data.infos import load_infos

    infos = load_infos(fixture_root / "infos.pkl")
    paths = visualize(
        fixture_root, "v1.0-trainval", "val", tmp_path, infos_path=fixture_root / "infos.pkl"
    )
    assert [p.name for p in paths] == [f"{infos[0]['sample_token']}.png"]
    assert check_gt_edges(paths[0], infos[0]) >= 20
    check_bev(paths[0], infos[0])


def _first_val(root: Path) -> dict:
    from labeldistill.data.infos import info_path, load_infos

    return load_infos(info_path(root, "mini_val"))[0]


def test_visualize_synthetic_with_predictions(synthetic_root: Path, tmp_path: Path) -> None:
    info = _first_val(synthetic_root)
    meta = sample_meta_from_info(info)
    global_from_ego = transform(meta.ego_rotation, meta.ego_translation)
    car_xyz = apply(global_from_ego, np.array([[0.0, -25.0, 0.8]]))[0]
    bus_xyz = apply(global_from_ego, np.array([[0.0, 25.0, 1.5]]))[0]

    def rec(name: str, xyz: np.ndarray, score: float) -> dict[str, Any]:
        return {
            "sample_token": info["sample_token"],
            "translation": xyz.tolist(),
            "size": [2.0, 4.5, 1.6],
            "rotation": list(meta.ego_rotation),
            "velocity": [0.0, 0.0],
            "detection_name": name,
            "detection_score": score,
            "attribute_name": "",
        }

    results = tmp_path / "res.json"
    results.write_text(
        json.dumps(
            {
                "meta": {},
                "results": {
                    info["sample_token"]: [rec("car", car_xyz, 0.9), rec("bus", bus_xyz, 0.1)]
                },
            }
        )
    )
    code = cli_main(
        ["visualize", "--dataroot", str(synthetic_root), "--version", "v1.0-mini"]
        + ["--split", "mini_val", "--results", str(results), "--out", str(tmp_path / "vis")]
        + ["--sample", info["sample_token"]]
    )
    assert code == 0
    png = tmp_path / "vis" / f"{info['sample_token']}.png"
    assert check_gt_edges(png, info) >= 10
    check_bev(png, info)
    arr = np.asarray(Image.open(png).convert("RGB"))
    first = info["cam_infos"][CAMERAS[0]]
    layout = panel_layout(first["width"], first["height"])
    bev = arr[:, 3 * layout.tile_w :]
    # LiDAR points are drawn; the car (score 0.9) is, the bus (0.1 < 0.3) is not
    assert (bev == np.array(POINT_COLOR)).all(axis=2).sum() > 500
    car_px = layout.bev_pixels(np.array([[1.125, -25.0]]))[0]  # on its heading line
    assert _has_color(arr, car_px, CLASS_COLORS["car"], r=1)
    assert not (bev == np.array(CLASS_COLORS["bus"])).all(axis=2).any()


def test_visualize_default_infos_and_unknown_token(synthetic_root: Path, tmp_path: Path) -> None:
    paths = visualize(synthetic_root, "v1.0-mini", "mini_val", tmp_path, num=2)
    assert len(paths) == 2 and all(p.stat().st_size > 10_000 for p in paths)
    with pytest.raises(UserError, match="nope"):
        visualize(synthetic_root, "v1.0-mini", "mini_val", tmp_path, tokens=["nope"])
