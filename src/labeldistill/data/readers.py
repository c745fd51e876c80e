"""Validated readers of the data path: point clouds and images.

Each raises :class:`labeldistill.errors.DataError` with one line naming the file and the fix.
The atomic writers are in :mod:`labeldistill.io`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from labeldistill.errors import DataError

POINT_DIMS = 5  # x, y, z, intensity, ring (nuScenes .pcd.bin, float32)


def load_points(path: str | Path, dims: int = POINT_DIMS) -> np.ndarray:
    """Read a nuScenes ``.pcd.bin`` (float32 x ``dims``) -> [P, dims] float32."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"point cloud {path} is missing: check --dataroot or re-download it")
    size = path.stat().st_size
    if size == 0 or size % (4 * dims) != 0:
        raise DataError(
            f"point cloud {path} is truncated or corrupt ({size} bytes is not a multiple of "
            f"{4 * dims}): re-download or regenerate it"
        )
    return np.fromfile(path, dtype=np.float32).reshape(-1, dims)


def load_image(path: str | Path) -> Image.Image:
    """Read an image as PIL RGB; fully decoded so that corrupt files fail here."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} is missing: check --dataroot or re-download it")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"image {path} is corrupt ({exc}): re-download or regenerate it") from None


def check_image(path: str | Path) -> tuple[int, int]:
    """Validate an image file cheaply (header + structure) -> (width, height)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} is missing: check --dataroot or re-download it")
    try:
        with Image.open(path) as img:
            size = img.size
            img.load()  # decode: catches truncated JPEG data, which verify() does not
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"image {path} is corrupt ({exc}): re-download or regenerate it") from None
    return size


def check_image_fast(path: str | Path) -> tuple[int, int]:
    """Like :func:`check_image` -> (width, height), but JPEGs are decoded at 1/8 scale (DCT
    scaling), which still reads every entropy-coded byte (truncation and corrupt data fail) at
    a fraction of the cost. Used by ``prepare`` to validate every key image of a dataset."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} is missing: check --dataroot or re-download it")
    try:
        with Image.open(path) as img:
            size = img.size
            if img.format == "JPEG":
                img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"image {path} is corrupt ({exc}): re-download or regenerate it") from None
    return size
