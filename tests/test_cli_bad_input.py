"""Bad input through the CLI (DESIGN.md 8, issue 2): missing dataroot, missing version folder,
a missing image, a truncated .pcd.bin, a corrupt JPEG, an empty split -> exit code 2, exactly
one ``error:`` line on stderr naming the file, no traceback, no info file, no partial file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from labeldistill.cli import main

REPO = Path(__file__).resolve().parents[1]


def linked_copy(src: Path, dst: Path) -> Path:
    """Hard-linked copy of a dataset root without info files and depth GT. Files to damage
    must be unlinked and rewritten (``_replace``), never written in place."""

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    ignore = shutil.ignore_patterns("nuscenes_infos_*.pkl", "depth_gt")
    shutil.copytree(src, dst, ignore=ignore, copy_function=link)
    return dst


def _replace(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def _early_info(synthetic_root: Path) -> dict:
    """A sample of the first split prepare() processes (mini_train): the run fails early."""
    from labeldistill.data.infos import info_path, load_infos

    return load_infos(info_path(synthetic_root, "mini_train"))[1]


def _check_failure(rc: int, err: str, root: Path | None, must_name: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert must_name in lines[0]
    assert "Traceback" not in err
    if root is not None and root.exists():
        assert not list(root.glob("nuscenes_infos_*")), "an info file was written"
        assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")], "partial file left"


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def test_missing_dataroot(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "no_such_root"
    rc, err = _run(capsys, "prepare", "--dataroot", str(root), "--version", "v1.0-mini")
    _check_failure(rc, err, None, str(root))
    assert not root.exists()


def test_missing_version_folder(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = linked_copy(synthetic_root, tmp_path / "root")
    rc, err = _run(capsys, "prepare", "--dataroot", str(root), "--version", "v1.0-trainval")
    _check_failure(rc, err, root, str(root / "v1.0-trainval"))
    assert "v1.0-mini" in err  # tells the user what is there


def _missing_image(root: Path, info: dict) -> Path:
    path = root / info["cam_infos"]["CAM_BACK_LEFT"]["filename"]
    path.unlink()
    return path


def _truncated_pcd(root: Path, info: dict) -> Path:
    path = root / info["lidar_infos"]["LIDAR_TOP"]["filename"]
    _replace(path, path.read_bytes()[:1001])
    return path


def _corrupt_jpeg(root: Path, info: dict) -> Path:
    path = root / info["cam_infos"]["CAM_FRONT"]["filename"]
    data = path.read_bytes()
    _replace(path, data[: len(data) // 2])  # a download cut in half
    return path


@pytest.mark.parametrize(
    "damage",
    [_missing_image, _truncated_pcd, _corrupt_jpeg],
    ids=["missing_image", "truncated_pcd", "corrupt_jpeg"],
)
def test_bad_sample_file(
    synthetic_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    damage: Callable[[Path, dict], Path],
) -> None:
    root = linked_copy(synthetic_root, tmp_path / "root")
    bad = damage(root, _early_info(synthetic_root))
    rc, err = _run(
        capsys, "prepare", "--dataroot", str(root), "--version", "v1.0-mini", "--workers", "1"
    )
    _check_failure(rc, err, root, str(bad))


def test_empty_split(synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = linked_copy(synthetic_root, tmp_path / "root")
    (root / "v1.0-mini").rename(root / "v1.0-test")
    rc, err = _run(capsys, "prepare", "--dataroot", str(root), "--version", "v1.0-test")
    _check_failure(rc, err, root, str(root / "v1.0-test" / "scene.json"))
    assert not (root / "depth_gt").exists()


def test_subprocess_exit_code(synthetic_root: Path, tmp_path: Path) -> None:
    """The installed console script, a corrupt JPEG in a 2-process pool."""
    exe = REPO / ".venv" / "bin" / "labeldistill"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "labeldistill.cli"]
    root = linked_copy(synthetic_root, tmp_path / "root")
    bad = _corrupt_jpeg(root, _early_info(synthetic_root))
    proc = subprocess.run(
        [*cmd, "prepare", "--dataroot", str(root), "--version", "v1.0-mini", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    _check_failure(proc.returncode, proc.stderr, root, str(bad))
    assert proc.stdout == ""
