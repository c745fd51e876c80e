"""Shared fixtures: one small synthetic nuScenes-format set per test session (built once, even
with pytest-xdist workers, under a file lock), the real one-sample fixture, and a CPU seed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "nuscenes_one_sample"

# Small enough to build in well under a minute on 2 cores; big enough for every split.
SYNTH_SAMPLES_PER_SCENE = 4
SYNTH_IMAGE_SIZE = (352, 198)
SYNTH_SEED = 7


@pytest.fixture(scope="session")
def fixture_root() -> Path:
    """The real nuScenes one-sample fixture (skips when absent)."""
    if not (FIXTURE / "infos.pkl").is_file():
        pytest.skip(f"real nuScenes fixture not found at {FIXTURE}")
    return FIXTURE


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by all workers of this run
    return root


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic v1.0-mini dataset, prepared (info files + depth GT)."""
    from filelock import FileLock

    from labeldistill.data.prepare import prepare
    from labeldistill.synth.generate import SynthConfig, generate

    shared = _shared_dir(tmp_path_factory)
    root = shared / "synthetic_nuscenes"
    done = shared / "synthetic_nuscenes.done"
    with FileLock(str(shared / "synthetic_nuscenes.lock")):
        if not done.exists():
            cfg = SynthConfig(
                seed=SYNTH_SEED,
                samples_per_scene=SYNTH_SAMPLES_PER_SCENE,
                image_width=SYNTH_IMAGE_SIZE[0],
                image_height=SYNTH_IMAGE_SIZE[1],
            )
            generate(root, cfg, workers=1, overwrite=True)
            prepare(root, "v1.0-mini", workers=1)
            done.touch()
    return root


def pytest_configure(config: pytest.Config) -> None:
    # One intra-op thread per process: the suite runs as 2 xdist workers on 2 cores, and
    # oversubscription makes small CPU kernels many times slower.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
    yield
