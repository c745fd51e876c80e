"""The one door of the data layer to the nuScenes devkit (imported lazily, inside functions).

``open_nuscenes`` turns the devkit's asserts and tracebacks about a wrong dataroot or version
into one-line :class:`~labeldistill.errors.DataError` messages and silences its prints;
``split_scenes`` maps the official split names of a version to scene names.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any

from labeldistill.errors import DataError, UserError
from labeldistill.nuscenes_schema import INFO_SPLITS, TABLES

log = logging.getLogger(__name__)


def check_version(version: str) -> tuple[str, ...]:
    """The official splits of ``version``; UserError naming the known versions otherwise."""
    if version not in INFO_SPLITS:
        known = ", ".join(INFO_SPLITS)
        raise UserError(f"unknown nuScenes version '{version}': use one of {known}")
    return INFO_SPLITS[version]


def check_dataroot(dataroot: str | Path, version: str) -> Path:
    """Check that ``dataroot/version`` holds the 13 tables -> the version folder.

    Raises DataError naming the missing dataroot, version folder or table and the fix.
    """
    root = Path(dataroot)
    if not root.is_dir():
        raise DataError(
            f"dataroot {root} does not exist: pass --dataroot the nuScenes folder that holds "
            f"samples/, sweeps/ and {version}/ (or create one with `labeldistill synth`)"
        )
    folder = root / version
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0"))
        hint = f"found {', '.join(found)}" if found else "no version folder found there"
        raise DataError(
            f"version folder {folder} does not exist ({hint}): pass the matching --version "
            f"or extract the {version} tables into {root}"
        )
    for table in TABLES:
        path = folder / f"{table}.json"
        if not path.is_file():
            raise DataError(
                f"table {path} is missing: re-download or re-extract the {version} metadata"
            )
    return folder


def open_nuscenes(dataroot: str | Path, version: str) -> Any:  # -> nuscenes.NuScenes
    """Load the devkit's ``NuScenes(version, dataroot)`` quietly.

    Raises DataError (one line, naming the file and the fix) for a missing dataroot, version
    folder or table, or a table that is not valid JSON.
    """
    folder = check_dataroot(dataroot, version)
    from nuscenes.nuscenes import NuScenes  # optional here: nuscenes devkit (heavy)

    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink):
            nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except json.JSONDecodeError as exc:
        bad = _first_bad_table(folder)
        raise DataError(
            f"table {bad or folder} is not valid JSON ({exc.msg} at line {exc.lineno}): "
            f"re-download or re-extract the {version} metadata"
        ) from None
    except (KeyError, AssertionError, FileNotFoundError) as exc:
        raise DataError(
            f"the {version} tables in {folder} are inconsistent ({type(exc).__name__}: {exc}): "
            "re-download or regenerate the dataset"
        ) from None
    log.debug("loaded %s from %s: %d samples", version, dataroot, len(nusc.sample))
    return nusc


def _first_bad_table(folder: Path) -> Path | None:
    for table in TABLES:
        path = folder / f"{table}.json"
        try:
            json.loads(path.read_text())
        except (OSError, ValueError):
            return path
    return None


def split_scenes(version: str, split: str) -> list[str]:
    """Official scene names of ``split`` (e.g. 'mini_val') of ``version`` (e.g. 'v1.0-mini').

    Raises UserError listing the valid splits for a split that does not belong to the version.
    """
    splits = check_version(version)
    if split not in splits:
        raise UserError(f"unknown split '{split}' for {version}: use one of {', '.join(splits)}")
    from nuscenes.utils.splits import create_splits_scenes  # optional here: nuscenes devkit

    with contextlib.redirect_stdout(io.StringIO()):
        return list(create_splits_scenes(verbose=False)[split])
