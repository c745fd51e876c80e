"""The devkit-free nuScenes vocabulary agrees with the devkit's own tables."""

from __future__ import annotations

import contextlib
import io

from labeldistill.nuscenes_schema import (
    ATTRIBUTE_NAMES,
    CATEGORIES,
    CATEGORY_TO_CLASS,
    CLASS_CATEGORY,
    DEVKIT_SPLITS,
    INFO_SPLITS,
    MINI_SCENES,
)
from labeldistill.structures import CLASSES


def test_category_table_matches_devkit() -> None:
    from nuscenes.eval.detection.utils import category_to_detection_name

    categories = [
        *CATEGORY_TO_CLASS,
        "vehicle.emergency.police",
        "animal",
        "static_object.bicycle_rack",
    ]
    for cat in categories:
        assert CATEGORY_TO_CLASS.get(cat) == category_to_detection_name(cat), cat
    assert set(CATEGORY_TO_CLASS.values()) == set(CLASSES)


def test_attribute_names_match_devkit() -> None:
    from nuscenes.eval.detection.constants import ATTRIBUTE_NAMES as DEVKIT_ATTRIBUTE_NAMES

    assert sorted(ATTRIBUTE_NAMES) == sorted(DEVKIT_ATTRIBUTE_NAMES)


def test_class_category_maps_back_to_its_class() -> None:
    assert list(CLASS_CATEGORY) == list(CLASSES)
    names = {name for name, _ in CATEGORIES}
    for cls, category in CLASS_CATEGORY.items():
        assert category in names and CATEGORY_TO_CLASS[category] == cls
    assert set(CATEGORY_TO_CLASS) <= names


def test_split_tables_match_devkit() -> None:
    from nuscenes.utils.splits import create_splits_scenes

    with contextlib.redirect_stdout(io.StringIO()):
        splits = create_splits_scenes(verbose=False)
    for version, names in DEVKIT_SPLITS.items():
        assert set(names) <= set(splits), version
        assert set(INFO_SPLITS[version]) <= set(names), version
    mini = [name for name, _ in MINI_SCENES]
    assert sorted(mini) == sorted(splits["mini_train"] + splits["mini_val"])
