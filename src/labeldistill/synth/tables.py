"""The rows of the 13 nuScenes tables of a synthetic set: one function per table.

Every row is a plain dict whose key order is the one written to the JSON file. Tokens are
deterministic (:func:`token`); the static tables (attribute, category, visibility, sensor) use
seed 0 so that their tokens are the same in every set.
"""

from __future__ import annotations

import calendar
import hashlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from labeldistill.nuscenes_schema import (
    ATTRIBUTES,
    CAMERA_CHANNELS,
    CATEGORIES,
    LIDAR_CHANNEL,
    VISIBILITY,
)

Row = dict[str, Any]

#: (channel, modality) of every sensor of the sensor table.
SENSORS: tuple[tuple[str, str], ...] = ((LIDAR_CHANNEL, "lidar"),) + tuple(
    (c, "camera") for c in CAMERA_CHANNELS
)


def token(seed: int, *parts: object) -> str:
    """Deterministic 32-hex token of (seed, parts)."""
    return hashlib.md5("|".join([str(seed), *map(str, parts)]).encode()).hexdigest()


def log_identity(seed: int, scene_index: int, location: str) -> tuple[str, str, str, int]:
    """(logfile, vehicle, date_captured, first timestamp in microseconds) of a scene's log."""
    rng = np.random.default_rng([seed, scene_index, 0x106])
    boston = location.startswith("boston")
    vehicle, tz = ("n008", -4) if boston else ("n015", 8)
    month = int(rng.integers(7, 10))
    day = int(rng.integers(1, 29))
    hour, minute, sec = int(rng.integers(8, 18)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
    date = f"2018-{month:02d}-{day:02d}"
    sign = "+" if tz >= 0 else "-"
    logfile = f"{vehicle}-{date}-{hour:02d}-{minute:02d}-{sec:02d}{sign}{abs(tz):02d}00"
    epoch = calendar.timegm((2018, month, day, hour, minute, sec, 0, 0, 0)) - tz * 3600
    start_us = (epoch + int(rng.integers(20, 600))) * 1_000_000 + int(rng.integers(0, 999_999))
    return logfile, vehicle, date, start_us


def _linked(tokens: Sequence[str], i: int) -> tuple[str, str]:
    """(prev, next) tokens of entry ``i`` of a chain ("" at its ends)."""
    return (tokens[i - 1] if i > 0 else "", tokens[i + 1] if i < len(tokens) - 1 else "")


# ---------------------------------------------------------------------------------------------
# per-scene tables
# ---------------------------------------------------------------------------------------------


def log_row(log_token: str, logfile: str, vehicle: str, date: str, location: str) -> Row:
    """The log table row of a scene."""
    return {
        "token": log_token,
        "logfile": logfile,
        "vehicle": vehicle,
        "date_captured": date,
        "location": location,
    }


def sample_rows(
    sample_tokens: Sequence[str], timestamps: Sequence[int], scene_token: str
) -> list[Row]:
    """The sample table rows of a scene (key samples in time order)."""
    rows = []
    for k, tok in enumerate(sample_tokens):
        prev, nxt = _linked(sample_tokens, k)
        rows.append(
            {
                "token": tok,
                "timestamp": timestamps[k],
                "prev": prev,
                "next": nxt,
                "scene_token": scene_token,
            }
        )
    return rows


def scene_row(
    scene_token: str, log_token: str, sample_tokens: Sequence[str], name: str, description: str
) -> Row:
    """The scene table row."""
    return {
        "token": scene_token,
        "log_token": log_token,
        "nbr_samples": len(sample_tokens),
        "first_sample_token": sample_tokens[0],
        "last_sample_token": sample_tokens[-1],
        "name": name,
        "description": description,
    }


def calibrated_sensor_row(
    calib_token: str,
    channel: str,
    translation: Sequence[float],
    rotation: Sequence[float],
    camera_intrinsic: list[list[float]],
) -> Row:
    """A calibrated_sensor row: ego_from_sensor as translation and quaternion (w, x, y, z),
    the 3x3 intrinsic of a camera ([] for the LiDAR)."""
    return {
        "token": calib_token,
        "sensor_token": token(0, "sensor", channel),
        "translation": list(translation),
        "rotation": list(rotation),
        "camera_intrinsic": camera_intrinsic,
    }


def ego_pose_row(
    pose_token: str, timestamp: int, rotation: list[float], translation: list[float]
) -> Row:
    """An ego_pose row (global_from_ego)."""
    return {
        "token": pose_token,
        "timestamp": timestamp,
        "rotation": rotation,
        "translation": translation,
    }


def sample_data_row(
    tokens: Sequence[str],
    i: int,
    *,
    sample_token: str,
    calibrated_sensor_token: str,
    timestamp: int,
    fileformat: str,
    is_key_frame: bool,
    height: int,
    width: int,
    filename: str,
) -> Row:
    """Row of entry ``i`` of a sensor's chain ``tokens`` of sample_data (its ego pose shares
    its token)."""
    prev, nxt = _linked(tokens, i)
    return {
        "token": tokens[i],
        "sample_token": sample_token,
        "ego_pose_token": tokens[i],
        "calibrated_sensor_token": calibrated_sensor_token,
        "timestamp": timestamp,
        "fileformat": fileformat,
        "is_key_frame": is_key_frame,
        "height": height,
        "width": width,
        "filename": filename,
        "prev": prev,
        "next": nxt,
    }


def instance_row(instance_token: str, category: str, annotation_tokens: Sequence[str]) -> Row:
    """An instance row: one track of annotations of an object of ``category``."""
    return {
        "token": instance_token,
        "category_token": token(0, "category", category),
        "nbr_annotations": len(annotation_tokens),
        "first_annotation_token": annotation_tokens[0],
        "last_annotation_token": annotation_tokens[-1],
    }


def visibility_level(visible: int, footprint: int) -> str:
    """Visibility token of an object seen on ``visible`` of its ``footprint`` pixels."""
    frac = visible / footprint if footprint > 0 else 0.0
    return "1" if frac <= 0.4 else "2" if frac <= 0.6 else "3" if frac <= 0.8 else "4"


def sample_annotation_row(
    track: Sequence[str],
    pos: int,
    *,
    sample_token: str,
    instance_token: str,
    visibility_token: str,
    attribute: str,
    box: Row,
    num_lidar_pts: int,
) -> Row:
    """Row of annotation ``pos`` of a track (annotation tokens ``track``); ``box``:
    translation, size (w, l, h) and rotation."""
    prev, nxt = _linked(track, pos)
    return {
        "token": track[pos],
        "sample_token": sample_token,
        "instance_token": instance_token,
        "visibility_token": visibility_token,
        "attribute_tokens": [token(0, "attribute", attribute)] if attribute else [],
        **box,
        "prev": prev,
        "next": nxt,
        "num_lidar_pts": num_lidar_pts,
        "num_radar_pts": 0,
    }


# ---------------------------------------------------------------------------------------------
# tables of the whole set
# ---------------------------------------------------------------------------------------------


def attribute_table() -> list[Row]:
    return [{"token": token(0, "attribute", a), "name": a, "description": d} for a, d in ATTRIBUTES]


def category_table() -> list[Row]:
    return [{"token": token(0, "category", c), "name": c, "description": d} for c, d in CATEGORIES]


def visibility_table() -> list[Row]:
    return [{"token": t, "level": lv, "description": d} for t, lv, d in VISIBILITY]


def sensor_table() -> list[Row]:
    return [
        {"token": token(0, "sensor", ch), "channel": ch, "modality": mod} for ch, mod in SENSORS
    ]


def map_table(seed: int, logs: Sequence[Row]) -> list[Row]:
    """One semantic-prior map per location, listing the logs recorded there."""
    maps: dict[str, Row] = {}
    for rec in logs:
        loc = rec["location"]
        if loc not in maps:
            maps[loc] = {
                "token": token(seed, "map", loc),
                "log_tokens": [],
                "category": "semantic_prior",
                "filename": f"maps/{token(seed, 'mapfile', loc)}.png",
            }
        maps[loc]["log_tokens"].append(rec["token"])
    return list(maps.values())


def map_png(seed: int, location: str) -> bytes:
    """A small semantic-prior PNG (drivable area as a few random straight roads)."""
    rng = np.random.default_rng([seed, int(hashlib.md5(location.encode()).hexdigest()[:8], 16)])
    img = Image.new("L", (200, 200), 0)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, 200, 4))
        draw.line((x0, y0, x1, y1), fill=255, width=int(rng.integers(3, 8)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
