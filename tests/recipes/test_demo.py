"""``labeldistill demo`` (recipes/demo.py) with the recording stage runner (conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from labeldistill.data.infos import info_path, load_infos
from labeldistill.evaluation.results import gt_as_results
from labeldistill.recipes.demo import run_demo


def test_demo_writes_pictures_and_scene_gif(
    fake_runs, synthetic_root: Path, tmp_path: Path
) -> None:
    """run_demo on an existing dataset (training faked; LabelDistill's 'predictions' are the
    GT): GT sanity mAP 1, two prediction pictures and an animated GIF of the first val scene
    with one frame per key sample."""
    fake_runs.results_of = lambda: gt_as_results(synthetic_root, "v1.0-mini", "mini_val")
    out = tmp_path / "demo"
    out.mkdir()
    (out / "data").symlink_to(synthetic_root, target_is_directory=True)
    result = run_demo(out, runner=fake_runs.runner)
    assert result.gt_metrics["mAP"] == pytest.approx(1.0)
    assert [r.key for r in result.pipeline.rows][-1] == "labeldistill"
    assert len(result.pictures) == 2 and all(p.is_file() for p in result.pictures)
    infos = load_infos(info_path(synthetic_root, "mini_val"))
    first = infos[0]["scene_token"]
    n_frames = sum(1 for i in infos if i["scene_token"] == first)
    names = [p.name for p in result.scene_gifs]
    assert names == ["scene_lidar_teacher.gif", "scene_labeldistill.gif"]
    for path in result.scene_gifs:
        assert path.parent == out / "pictures" and Image.open(path).n_frames == n_frames > 1
