"""An animated GIF of one scene: per key sample the six cameras and the BEV with ground truth
and predictions (the picture of :func:`labeldistill.viz.visualize.render_sample`), one
frame per key sample in time order, like the authors' demo video.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import ImageDraw
from tqdm import tqdm

from labeldistill.data.infos import info_path, load_infos
from labeldistill.errors import DataError, UserError
from labeldistill.evaluation.results import load_results
from labeldistill.io import atomic_write_bytes
from labeldistill.viz.visualize import HEADER_HEIGHT, render_sample

logger = logging.getLogger(__name__)

#: Camera tile width of a scene frame (smaller than the PNG pictures: GIFs get large).
SCENE_TILE_WIDTH = 320
#: Display time of one key sample (the key samples are 0.5 s apart).
FRAME_MS = 500


def scene_tokens(dataroot: str | Path, version: str) -> dict[str, str]:
    """Scene name -> scene token from ``<dataroot>/<version>/scene.json``."""
    path = Path(dataroot) / version / "scene.json"
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"scene table {path} not found: check --dataroot and --version") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"scene table {path} is not valid JSON: re-download the metadata") from None
    return {str(s["name"]): str(s["token"]) for s in table}


def scene_infos(infos: Sequence[dict], scene_token: str) -> list[dict]:
    """The infos of one scene in time order."""
    chosen = [i for i in infos if i.get("scene_token") == scene_token]
    return sorted(chosen, key=lambda i: int(i["timestamp"]))


def render_scene_frames(
    infos: Sequence[Mapping[str, Any]],
    dataroot: str | Path,
    predictions: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    score_threshold: float = 0.3,
    tile_w: int = SCENE_TILE_WIDTH,
    title: str = "",
) -> list[Any]:
    """One PIL RGB picture per info (same size), with ``title`` and ``k/n`` in the header."""
    predictions = predictions or {}
    frames = []
    n = len(infos)
    for k, info in enumerate(tqdm(infos, desc="scene", unit="frame", disable=n < 2)):
        token = str(info["sample_token"])
        image = render_sample(info, dataroot, predictions.get(token, []), score_threshold, tile_w)
        draw = ImageDraw.Draw(image)
        label = f"{title}  {k + 1}/{n}".strip()
        draw.rectangle(
            (image.width - 8 * len(label) - 12, 0, image.width, HEADER_HEIGHT - 1),
            fill=(255, 255, 255),
        )
        draw.text((image.width - 8 * len(label) - 6, 5), label, fill=(0, 0, 0))
        frames.append(image)
    return frames


def save_gif(frames: Sequence[Any], path: str | Path, frame_ms: int = FRAME_MS) -> Path:
    """Write PIL frames as a looping animated GIF (atomically)."""
    if not frames:
        raise UserError(f"no frames to write to {path}")
    buf = io.BytesIO()
    first, rest = frames[0], list(frames[1:])
    first.save(
        buf,
        format="GIF",
        save_all=True,
        append_images=rest,
        duration=frame_ms,
        loop=0,
        optimize=False,
        disposal=1,
    )
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def visualize_scene(
    dataroot: str | Path,
    version: str,
    split: str,
    scene: str,
    out: str | Path,
    infos_path: str | Path | None = None,
    results_path: str | Path | None = None,
    score_threshold: float = 0.3,
    tile_w: int = SCENE_TILE_WIDTH,
    frame_ms: int = FRAME_MS,
) -> Path:
    """Write the GIF of scene ``scene`` (a name such as ``scene-0061``, or a scene token) to
    ``out`` -> the path. Key samples come from ``infos_path`` (default: the split's info
    file in ``dataroot``); predictions from ``results_path`` (nuScenes result JSON)."""
    dataroot = Path(dataroot)
    if not dataroot.is_dir():
        raise DataError(f"dataroot {dataroot} does not exist: check --dataroot")
    src = Path(infos_path) if infos_path is not None else info_path(dataroot, split)
    infos = load_infos(src)
    names = scene_tokens(dataroot, version)
    token = names.get(scene, scene)
    chosen = scene_infos(infos, token)
    if not chosen:
        present = sorted(
            n for n, t in names.items() if any(i.get("scene_token") == t for i in infos)
        )
        raise UserError(
            f"scene '{scene}' has no samples in {src}: pick one of {', '.join(present[:12])}"
            f"{' ...' if len(present) > 12 else ''} (or another --split)"
        )
    predictions: Mapping[str, Any] = {}
    if results_path is not None:
        predictions = load_results(Path(results_path))["results"]
    title = next((n for n, t in names.items() if t == token), scene)
    frames = render_scene_frames(chosen, dataroot, predictions, score_threshold, tile_w, title)
    path = save_gif(frames, out, frame_ms)
    logger.info("%s: %d frames of %s -> %s", version, len(frames), title, path)
    return path
