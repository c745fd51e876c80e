"""Scene GIF (issue 6): one frame per key sample of the scene, the expected size, content that
changes over time, predictions drawn when given; the CLI path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labeldistill.data.infos import info_path, load_infos
from labeldistill.errors import UserError
from labeldistill.viz.scene_video import scene_infos, scene_tokens, visualize_scene
from labeldistill.viz.visualize import panel_layout

VERSION = "v1.0-mini"
SPLIT = "mini_val"


def _frames(path: Path) -> list[np.ndarray]:
    im = Image.open(path)
    out = []
    for i in range(im.n_frames):
        im.seek(i)
        out.append(np.asarray(im.convert("RGB")).astype(np.int32))
    return out


def _scene(root: Path) -> tuple[str, list[dict]]:
    infos = load_infos(info_path(root, SPLIT))
    names = scene_tokens(root, VERSION)
    name = next(n for n, t in names.items() if scene_infos(infos, t))
    return name, scene_infos(infos, names[name])


def test_scene_gif_frames_size_and_motion(synthetic_root: Path, tmp_path: Path) -> None:
    from labeldistill.cli import main

    name, infos = _scene(synthetic_root)
    assert len(infos) >= 3
    out = tmp_path / "scene.gif"
    assert (
        main(
            [
                "visualize",
                "--dataroot",
                str(synthetic_root),
                "--version",
                VERSION,
                "--split",
                SPLIT,
                "--scene",
                name,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    frames = _frames(out)
    assert len(frames) == len(infos)  # one frame per key sample
    cam = infos[0]["cam_infos"]["CAM_FRONT"]
    layout = panel_layout(int(cam["width"]), int(cam["height"]), tile_w=320)
    assert frames[0].shape == (layout.height, layout.width, 3)
    # consecutive frames differ (the ego moves: cameras and BEV change), in the camera tiles
    # and in the BEV panel
    for a, b in zip(frames, frames[1:]):
        cams = np.abs(
            a[40 : layout.height, : 3 * layout.tile_w] - b[40 : layout.height, : 3 * layout.tile_w]
        )
        bev = np.abs(a[40:, 3 * layout.tile_w :] - b[40:, 3 * layout.tile_w :])
        assert cams.mean() > 1.0 and (bev > 0).any()
    # timestamps strictly increase: frames are in time order
    stamps = [int(i["timestamp"]) for i in infos]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    # green GT boxes are drawn in the BEV panel
    g = frames[0][:, 3 * layout.tile_w :]
    green = (g[..., 1] > 200) & (g[..., 0] < 80) & (g[..., 2] < 80)
    assert green.sum() > 20


def test_scene_gif_with_predictions_and_bad_scene(synthetic_root: Path, tmp_path: Path) -> None:
    from labeldistill.evaluation.results import gt_as_results, write_results

    name, infos = _scene(synthetic_root)
    results = gt_as_results(synthetic_root, VERSION, SPLIT)
    res_path = write_results(tmp_path / "r.json", results)
    plain = visualize_scene(synthetic_root, VERSION, SPLIT, name, tmp_path / "a.gif")
    with_pred = visualize_scene(
        synthetic_root, VERSION, SPLIT, name, tmp_path / "b.gif", results_path=res_path
    )
    a, b = _frames(plain), _frames(with_pred)
    assert len(a) == len(b) == len(infos)
    assert np.abs(a[0] - b[0]).sum() > 0  # predictions drawn in class colours
    assert json.loads(Path(res_path).read_text())["results"]
    with pytest.raises(UserError, match="scene-9999"):
        visualize_scene(synthetic_root, VERSION, SPLIT, "scene-9999", tmp_path / "c.gif")
