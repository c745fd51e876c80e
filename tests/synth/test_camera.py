"""The per-pixel class maps of the synthetic cameras (stage-0 labels): values and file names."""

from __future__ import annotations

import numpy as np
import pytest

from labeldistill.synth.camera import segmentation_map, segmentation_path


def test_segmentation_map_hand_case() -> None:
    # object 0 is a pedestrian (class 8), object 1 unannotated scenery (-1), object 2 a car (0)
    ids = np.array([[-1, 0, 2], [1, 2, -1]])
    seg = segmentation_map(ids, [8, -1, 0])
    assert seg.dtype == np.uint8
    assert seg.tolist() == [[0, 9, 1], [0, 1, 0]]


def test_segmentation_path() -> None:
    name = "samples/CAM_FRONT/n008-x__CAM_FRONT__15.jpg"
    assert segmentation_path(name) == "segmentation/CAM_FRONT/n008-x__CAM_FRONT__15.png"
    with pytest.raises(ValueError):
        segmentation_path("sweeps/CAM_FRONT/a.jpg")
