"""The stage table: one entry per stage builder, data needs per stage."""

from __future__ import annotations

import typing

from labeldistill.config import ExperimentConfig
from labeldistill.models.build import STAGE_BUILDERS
from labeldistill.training.stages import STAGES


def test_stage_dispatch_table() -> None:
    assert set(STAGES) >= {"student", "lidar_teacher"}
    assert STAGES["student"].needs_depth and not STAGES["student"].needs_lidar
    assert STAGES["lidar_teacher"].needs_lidar and not STAGES["lidar_teacher"].needs_depth


def test_every_builder_has_a_stage() -> None:
    assert set(STAGES) == set(STAGE_BUILDERS)


def test_the_config_accepts_exactly_the_stages() -> None:
    stage_type = typing.get_type_hints(ExperimentConfig)["stage"]
    assert set(typing.get_args(stage_type)) == set(STAGES)
