"""Synthetic nuScenes-format dataset (``labeldistill synth``; DESIGN.md section 5).

Writes a ``v1.0-mini`` tree that ``nuscenes.nuscenes.NuScenes`` loads unchanged: the 13 JSON
tables, the 10 official mini scene names (8 mini_train + 2 mini_val) (or a ``v1.0-trainval``
tree with a subset of the official train / val scene names), key samples at 2 Hz with
six rendered camera JPEGs and a ray-cast LIDAR_TOP scan, LiDAR sweeps at 20 Hz in
``sweeps/LIDAR_TOP``, a map PNG per location. One 3D world per scene (``synthetic_world``) is
seen by all sensors (``synthetic_render``); annotations carry tracks, attributes, visibility and
``num_lidar_pts`` equal to what the devkit's ``points_in_box`` counts in the key scan (points
within 2 mm of an annotated box surface are dropped from the scan so that float32 round-off in
any consumer cannot flip a count).

Deterministic: every scene is a pure function of (seed, scene index), so the output is
byte-identical whatever the number of worker processes.
"""

from __future__ import annotations

import calendar
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labeldistill.data.io import check_output_dir, die_with_parent
from labeldistill.errors import UserError

log = logging.getLogger(__name__)

VERSION = "v1.0-mini"
#: Versions the generator writes: the 10 mini scenes, or a subset of the official trainval
#: scene names (``SynthConfig.train_scenes`` / ``val_scenes``).
VERSIONS = ("v1.0-mini", "v1.0-trainval")
LOCATIONS = (
    "boston-seaport",
    "singapore-onenorth",
    "singapore-queenstown",
    "singapore-hollandvillage",
)
#: The official v1.0-mini scenes (nuscenes.utils.splits) with the location they were recorded in.
SCENES: tuple[tuple[str, str], ...] = (
    ("scene-0061", "singapore-onenorth"),
    ("scene-0103", "boston-seaport"),
    ("scene-0553", "boston-seaport"),
    ("scene-0655", "boston-seaport"),
    ("scene-0757", "boston-seaport"),
    ("scene-0796", "singapore-queenstown"),
    ("scene-0916", "singapore-queenstown"),
    ("scene-1077", "singapore-hollandvillage"),
    ("scene-1094", "singapore-hollandvillage"),
    ("scene-1100", "singapore-hollandvillage"),
)
CAMERA_NAMES: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_FRONT_LEFT",
)
SENSORS: tuple[tuple[str, str], ...] = (("LIDAR_TOP", "lidar"),) + tuple(
    (c, "camera") for c in CAMERA_NAMES
)

#: The nuScenes category table (names as in the devkit; descriptions our own, short).
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("animal", "All animals, e.g. cats, rats, dogs, deer, birds."),
    ("human.pedestrian.adult", "Adult subcategory."),
    ("human.pedestrian.child", "Child subcategory."),
    ("human.pedestrian.construction_worker", "Construction worker."),
    (
        "human.pedestrian.personal_mobility",
        "A small electric or self-propelled vehicle with a rider.",
    ),
    ("human.pedestrian.police_officer", "Police officer."),
    ("human.pedestrian.stroller", "Strollers."),
    ("human.pedestrian.wheelchair", "Wheelchairs."),
    ("movable_object.barrier", "Temporary road barrier placed to redirect traffic."),
    ("movable_object.debris", "Movable object that is left on the driveable surface."),
    ("movable_object.pushable_pullable", "Objects that a pedestrian may push or pull."),
    ("movable_object.trafficcone", "All types of traffic cones."),
    ("static_object.bicycle_rack", "Area or device intended to park or secure bicycles."),
    ("vehicle.bicycle", "Human or electric powered 2-wheeled vehicle."),
    ("vehicle.bus.bendy", "Bendy bus subcategory."),
    ("vehicle.bus.rigid", "Rigid bus subcategory."),
    ("vehicle.car", "Vehicle designed primarily for personal use."),
    ("vehicle.construction", "Vehicles primarily designed for construction."),
    ("vehicle.emergency.ambulance", "All types of ambulances."),
    ("vehicle.emergency.police", "All types of police vehicles."),
    ("vehicle.motorcycle", "Gasoline or electric powered 2-wheeled vehicle."),
    ("vehicle.trailer", "Any vehicle trailer."),
    ("vehicle.truck", "Vehicles primarily designed to haul cargo."),
)
ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("vehicle.moving", "Vehicle is moving."),
    ("vehicle.stopped", "Vehicle, with a driver/rider in/on it, is currently stationary."),
    ("vehicle.parked", "Vehicle is stationary and has no driver/rider in/on it."),
    ("cycle.with_rider", "There is a rider on the bicycle or motorcycle."),
    ("cycle.without_rider", "There is NO rider on the bicycle or motorcycle."),
    ("pedestrian.sitting_lying_down", "The human is sitting or lying down."),
    ("pedestrian.standing", "The human is standing."),
    ("pedestrian.moving", "The human is moving."),
)
VISIBILITY: tuple[tuple[str, str, str], ...] = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)
TABLES = (
    "attribute",
    "calibrated_sensor",
    "category",
    "ego_pose",
    "instance",
    "log",
    "map",
    "sample",
    "sample_annotation",
    "sample_data",
    "scene",
    "sensor",
    "visibility",
)
SWEEP_DT_US = 50_000  # 20 Hz LiDAR
KEY_DT_US = 500_000  # 2 Hz key samples
SWEEPS_PER_KEY = KEY_DT_US // SWEEP_DT_US
EXTRA_SWEEPS = 5  # sweeps before the first / after the last key frame (the 10-sweep teacher)
AMBIGUITY_MARGIN = 2e-3  # metres; points this close to an annotated box surface are dropped


@dataclass(frozen=True)
class SynthConfig:
    """Synthetic dataset options.

    ``fov_front_deg`` is the horizontal field of view of the five 70-degree cameras,
    ``fov_back_deg`` that of CAM_BACK; intrinsics scale with the image size.
    ``lidar_azimuth_steps`` columns per 360-degree LiDAR sweep (32 beams each).
    ``version``: ``v1.0-mini`` (the 10 official mini scenes, 8 mini_train + 2 mini_val) or
    ``v1.0-trainval`` (the first ``train_scenes`` names of the official train split and the
    first ``val_scenes`` of the official val split; the devkit evaluates the val scenes present).
    ``segmentation``: also write a per-pixel class map of every camera image (see
    :func:`segmentation_path`; not part of the nuScenes format, read by stage 0).
    """

    seed: int = 0
    samples_per_scene: int = 10
    image_width: int = 704
    image_height: int = 396
    fov_front_deg: float = 70.0
    fov_back_deg: float = 110.0
    lidar_azimuth_steps: int = 720
    segmentation: bool = False
    version: str = VERSION
    train_scenes: int = 32
    val_scenes: int = 8

    def validate(self) -> None:
        if self.samples_per_scene < 1:
            raise UserError(f"--samples-per-scene {self.samples_per_scene} must be at least 1")
        if self.image_width < 32 or self.image_height < 32:
            raise UserError(
                f"--image-size {self.image_width}x{self.image_height} is too small: "
                "use at least 32x32"
            )
        if not (10.0 < self.fov_front_deg < 170.0 and 10.0 < self.fov_back_deg < 170.0):
            raise UserError("camera field of view must be between 10 and 170 degrees")
        if self.lidar_azimuth_steps < 90:
            raise UserError(f"lidar_azimuth_steps {self.lidar_azimuth_steps} must be at least 90")
        if self.version not in VERSIONS:
            raise UserError(
                f"--version {self.version} is not generated: use {' or '.join(VERSIONS)}"
            )
        if self.version != VERSION and not (
            1 <= self.train_scenes <= 700 and 1 <= self.val_scenes <= 150
        ):
            raise UserError(
                f"--scenes {self.train_scenes}x{self.val_scenes}: use 1-700 train and 1-150 val "
                "scenes (the official trainval split has 700 and 150)"
            )


def scene_list(cfg: SynthConfig) -> tuple[tuple[str, str], ...]:
    """(scene name, location) of every scene ``cfg`` generates, in generation order.

    v1.0-mini: :data:`SCENES`. v1.0-trainval: the first ``train_scenes`` of the devkit's
    official train list, then the first ``val_scenes`` of its val list, in the lists' order;
    the locations cycle through :data:`LOCATIONS` (the real ones are not in the split lists).
    """
    if cfg.version == VERSION:
        return SCENES
    from nuscenes.utils.splits import create_splits_scenes

    with contextlib.redirect_stdout(io.StringIO()):
        splits = create_splits_scenes(verbose=False)
    names = list(splits["train"][: cfg.train_scenes]) + list(splits["val"][: cfg.val_scenes])
    return tuple((n, LOCATIONS[i % len(LOCATIONS)]) for i, n in enumerate(names))


def token(seed: int, *parts: object) -> str:
    """Deterministic 32-hex token of (seed, parts)."""
    return hashlib.md5("|".join([str(seed), *map(str, parts)]).encode()).hexdigest()


#: Folder of the per-pixel class maps (``SynthConfig.segmentation``), beside ``samples``.
SEGMENTATION_DIR = "segmentation"
#: Value of a pixel that shows no annotated object (ground, sky, buildings, trees, poles).
SEG_BACKGROUND = 0


def segmentation_path(image_filename: str) -> str:
    """Relative path of the class map of the camera image ``samples/<CAM>/<name>.jpg``:
    ``segmentation/<CAM>/<name>.png`` (uint8, :func:`segmentation_map` values)."""
    parts = Path(image_filename).with_suffix(".png").parts
    if len(parts) < 2 or parts[0] != "samples":
        raise ValueError(f"not a camera sample file name: {image_filename}")
    return str(Path(SEGMENTATION_DIR, *parts[1:]))


def segmentation_map(object_ids: np.ndarray, object_classes: list[int]) -> np.ndarray:
    """Per-pixel class map of a render: [H, W] object index (-1 = no object) -> [H, W] uint8,
    ``SEG_BACKGROUND`` (0) where no annotated object is seen (also unannotated scenery,
    class -1), else 1 + the object's detection class index (1-10, ``structures.CLASSES``)."""
    lut = np.array([SEG_BACKGROUND] + [c + 1 if c >= 0 else SEG_BACKGROUND for c in object_classes])
    return lut[object_ids + 1].astype(np.uint8)


def _yaw_quat(yaw: float) -> list[float]:
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def _log_identity(seed: int, scene_index: int, location: str) -> tuple[str, str, str, int]:
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


# ---------------------------------------------------------------------------------------------
# one scene (runs in a worker process)
# ---------------------------------------------------------------------------------------------


def _scene_job(args: tuple[str, SynthConfig, int]) -> dict[str, list[dict[str, Any]]]:
    root, cfg, scene_index = args
    try:  # small matrices: BLAS threads only contend with the other scene processes
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn (devkit dep)
        return build_scene(Path(root), cfg, scene_index)
    with threadpool_limits(1):
        return build_scene(Path(root), cfg, scene_index)


def build_scene(root: Path, cfg: SynthConfig, scene_index: int) -> dict[str, list[dict[str, Any]]]:
    """Simulate, render and ray-cast one scene; write its files under ``root``; return its rows
    of the per-scene tables (log, scene, sample, sample_data, ego_pose, calibrated_sensor,
    instance, sample_annotation)."""
    from PIL import Image

    from labeldistill.data import synthetic_render as R
    from labeldistill.data import synthetic_world as W
    from labeldistill.geometry import quaternion_to_matrix

    seed, K = cfg.seed, cfg.samples_per_scene
    name, location = scene_list(cfg)[scene_index]
    world = W.build_world(seed, scene_index, K)
    logfile, vehicle, date, t0_us = _log_identity(seed, scene_index, location)
    log_token = token(seed, "log", name)
    scene_token = token(seed, "scene", name)
    rows: dict[str, list[dict[str, Any]]] = {
        k: []
        for k in (
            "log",
            "scene",
            "sample",
            "sample_data",
            "ego_pose",
            "calibrated_sensor",
            "instance",
            "sample_annotation",
        )
    }
    rows["log"].append(
        {
            "token": log_token,
            "logfile": logfile,
            "vehicle": vehicle,
            "date_captured": date,
            "location": location,
        }
    )
    sample_tokens = [token(seed, "sample", name, k) for k in range(K)]
    for k in range(K):
        rows["sample"].append(
            {
                "token": sample_tokens[k],
                "timestamp": t0_us + k * KEY_DT_US,
                "prev": sample_tokens[k - 1] if k > 0 else "",
                "next": sample_tokens[k + 1] if k < K - 1 else "",
                "scene_token": scene_token,
            }
        )
    rows["scene"].append(
        {
            "token": scene_token,
            "log_token": log_token,
            "nbr_samples": K,
            "first_sample_token": sample_tokens[0],
            "last_sample_token": sample_tokens[-1],
            "name": name,
            "description": world.description,
        }
    )
    # --- calibration ------------------------------------------------------------------------
    calib: dict[str, dict[str, Any]] = {}
    lidar_q = _yaw_quat(W.LIDAR_YAW)
    calib["LIDAR_TOP"] = {
        "token": token(seed, "calibrated_sensor", name, "LIDAR_TOP"),
        "sensor_token": token(0, "sensor", "LIDAR_TOP"),
        "translation": list(W.LIDAR_TRANSLATION),
        "rotation": lidar_q,
        "camera_intrinsic": [],
    }
    ego_from_cam: dict[str, np.ndarray] = {}
    intrinsics: dict[str, np.ndarray] = {}
    from labeldistill.geometry import matrix_to_quaternion

    for cam in CAMERA_NAMES:
        trans, yaw_deg, pitch_deg, _ = W.CAMERA_RIG[cam]
        rot = W.camera_rotation(yaw_deg, pitch_deg)
        q = [float(v) for v in matrix_to_quaternion(rot)]
        k_mat = W.camera_intrinsic(
            cam, cfg.image_width, cfg.image_height, cfg.fov_front_deg, cfg.fov_back_deg
        )
        calib[cam] = {
            "token": token(seed, "calibrated_sensor", name, cam),
            "sensor_token": token(0, "sensor", cam),
            "translation": list(trans),
            "rotation": q,
            "camera_intrinsic": k_mat.tolist(),
        }
        m = np.eye(4)
        m[:3, :3] = quaternion_to_matrix(q)
        m[:3, 3] = trans
        ego_from_cam[cam] = m
        intrinsics[cam] = k_mat
    rows["calibrated_sensor"].extend(calib.values())

    def ego_pose_record(tok: str, t: float, ts: int) -> dict[str, Any]:
        pose = world.ego_pose(t)
        return {
            "token": tok,
            "timestamp": ts,
            "rotation": _yaw_quat(world.road.heading),
            "translation": [float(pose[0, 3]), float(pose[1, 3]), 0.0],
        }

    # --- annotated objects per key sample ----------------------------------------------------
    key_times = [0.5 * k for k in range(K)]
    in_range: dict[int, list[int]] = {}
    for k, t in enumerate(key_times):
        ego_xy = world.ego_pose(t)[:2, 3]
        in_range[k] = [
            i
            for i, o in enumerate(world.objects)
            if o.cls >= 0 and float(np.hypot(*(o.center(t)[:2] - ego_xy))) <= W.ANNOTATION_RANGE
        ]
    # instances: contiguous runs of samples of one object
    runs: dict[tuple[int, int], int] = {}  # (object, sample) -> run id
    run_samples: dict[int, list[int]] = {}
    run_object: dict[int, int] = {}
    for i in sorted({i for v in in_range.values() for i in v}):
        prev_k = None
        for k in range(K):
            if i in in_range[k]:
                if prev_k is None or prev_k != k - 1:
                    rid = len(run_samples)
                    run_samples[rid] = []
                    run_object[rid] = i
                runs[(i, k)] = rid
                run_samples[rid].append(k)
                prev_k = k
    ann_token = {key: token(seed, "ann", name, key[0], key[1]) for key in runs}
    inst_token = {rid: token(seed, "instance", name, rid) for rid in run_samples}
    ann_box: dict[tuple[int, int], dict[str, Any]] = {}
    for (i, k), _rid in runs.items():
        o = world.objects[i]
        c = o.center(key_times[k])
        ann_box[(i, k)] = {
            "translation": [round(float(c[0]), 3), round(float(c[1]), 3), round(float(c[2]), 3)],
            "size": list(o.size),
            "rotation": _yaw_quat(o.yaw),
        }

    # --- LiDAR: sweeps at 20 Hz from 5 before the first to 5 after the last key sample -------
    ego_from_lidar = np.eye(4)
    ego_from_lidar[:3, :3] = quaternion_to_matrix(lidar_q)
    ego_from_lidar[:3, 3] = W.LIDAR_TRANSLATION
    js = list(range(-EXTRA_SWEEPS, SWEEPS_PER_KEY * (K - 1) + EXTRA_SWEEPS + 1))
    lidar_tokens = [token(seed, "sample_data", name, "LIDAR_TOP", j) for j in js]
    num_pts: dict[tuple[int, int], int] = {}
    for n, j in enumerate(js):
        t = j * SWEEP_DT_US / 1e6
        ts = t0_us + j * SWEEP_DT_US
        rng = np.random.default_rng([seed, scene_index, j + 1000, 1])
        pts = R.scan_lidar(world, t, cfg.lidar_azimuth_steps, rng)
        key = j % SWEEPS_PER_KEY == 0 and 0 <= j <= SWEEPS_PER_KEY * (K - 1)
        k_near = min(max(int(math.floor(j / SWEEPS_PER_KEY + 0.5)), 0), K - 1)
        pose_rec = ego_pose_record(lidar_tokens[n], t, ts)
        if key:
            k = j // SWEEPS_PER_KEY
            global_from_ego = np.eye(4)
            global_from_ego[:3, :3] = quaternion_to_matrix(pose_rec["rotation"])
            global_from_ego[:3, 3] = pose_rec["translation"]
            m = global_from_ego @ ego_from_lidar
            pg = pts[:, :3].astype(np.float64) @ m[:3, :3].T + m[:3, 3]
            keys = [(i, k) for i in in_range[k]]
            boxes = [
                (
                    np.asarray(ann_box[key_]["translation"]),
                    np.asarray(ann_box[key_]["size"]),
                    quaternion_to_matrix(ann_box[key_]["rotation"]),
                )
                for key_ in keys
            ]
            inside, ambiguous = R.points_in_boxes_exact(pg, boxes, AMBIGUITY_MARGIN)
            pts = pts[~ambiguous]
            inside = inside[:, ~ambiguous]
            for key_, row in zip(keys, inside):
                num_pts[key_] = int(row.sum())
        folder = "samples" if key else "sweeps"
        filename = f"{folder}/LIDAR_TOP/{logfile}__LIDAR_TOP__{ts}.pcd.bin"
        (root / filename).write_bytes(pts.tobytes())
        rows["ego_pose"].append(pose_rec)
        rows["sample_data"].append(
            {
                "token": lidar_tokens[n],
                "sample_token": sample_tokens[k_near],
                "ego_pose_token": lidar_tokens[n],
                "calibrated_sensor_token": calib["LIDAR_TOP"]["token"],
                "timestamp": ts,
                "fileformat": "pcd",
                "is_key_frame": bool(key),
                "height": 0,
                "width": 0,
                "filename": filename,
                "prev": lidar_tokens[n - 1] if n > 0 else "",
                "next": lidar_tokens[n + 1] if n < len(js) - 1 else "",
            }
        )

    # --- cameras (key frames) --------------------------------------------------------------
    vis_pix: dict[tuple[int, int], list[int]] = {}
    for ci, cam in enumerate(CAMERA_NAMES):
        cam_tokens = [token(seed, "sample_data", name, cam, k) for k in range(K)]
        for k in range(K):
            offset = W.CAMERA_TIME_OFFSET[cam]
            ts = t0_us + k * KEY_DT_US + int(round(offset * 1e6))
            t = (ts - t0_us) / 1e6
            rng = np.random.default_rng([seed, scene_index, k, ci, 2])
            out = R.render_camera(
                world, t, ego_from_cam[cam], intrinsics[cam], cfg.image_width, cfg.image_height, rng
            )
            for i, fp in out.footprint.items():
                acc = vis_pix.setdefault((i, k), [0, 0])
                acc[0] += out.visible[i]
                acc[1] += fp
            filename = f"samples/{cam}/{logfile}__{cam}__{ts}.jpg"
            buf = io.BytesIO()
            lo, hi = world.style.jpeg_quality
            Image.fromarray(out.image).save(
                buf, format="JPEG", quality=int(rng.integers(lo, hi + 1))
            )
            (root / filename).write_bytes(buf.getvalue())
            if cfg.segmentation:
                seg = segmentation_map(out.object_ids, [o.cls for o in world.objects])
                seg_buf = io.BytesIO()
                Image.fromarray(seg).save(seg_buf, format="PNG")
                (root / segmentation_path(filename)).write_bytes(seg_buf.getvalue())
            rows["ego_pose"].append(ego_pose_record(cam_tokens[k], t, ts))
            rows["sample_data"].append(
                {
                    "token": cam_tokens[k],
                    "sample_token": sample_tokens[k],
                    "ego_pose_token": cam_tokens[k],
                    "calibrated_sensor_token": calib[cam]["token"],
                    "timestamp": ts,
                    "fileformat": "jpg",
                    "is_key_frame": True,
                    "height": cfg.image_height,
                    "width": cfg.image_width,
                    "filename": filename,
                    "prev": cam_tokens[k - 1] if k > 0 else "",
                    "next": cam_tokens[k + 1] if k < K - 1 else "",
                }
            )

    # --- annotations and instances --------------------------------------------------------
    cat_token = {c: token(0, "category", c) for c, _ in CATEGORIES}
    attr_token = {a: token(0, "attribute", a) for a, _ in ATTRIBUTES}
    for rid, ks in run_samples.items():
        i = run_object[rid]
        o = world.objects[i]
        toks = [ann_token[(i, k)] for k in ks]
        rows["instance"].append(
            {
                "token": inst_token[rid],
                "category_token": cat_token[o.category],
                "nbr_annotations": len(ks),
                "first_annotation_token": toks[0],
                "last_annotation_token": toks[-1],
            }
        )
    for k in range(K):
        for i in in_range[k]:
            rid = runs[(i, k)]
            ks = run_samples[rid]
            pos = ks.index(k)
            o = world.objects[i]
            vis, fp = vis_pix.get((i, k), [0, 0])
            frac = vis / fp if fp > 0 else 0.0
            level = "1" if frac <= 0.4 else "2" if frac <= 0.6 else "3" if frac <= 0.8 else "4"
            rows["sample_annotation"].append(
                {
                    "token": ann_token[(i, k)],
                    "sample_token": sample_tokens[k],
                    "instance_token": inst_token[rid],
                    "visibility_token": level,
                    "attribute_tokens": [attr_token[o.attribute]] if o.attribute else [],
                    **ann_box[(i, k)],
                    "prev": ann_token[(i, ks[pos - 1])] if pos > 0 else "",
                    "next": ann_token[(i, ks[pos + 1])] if pos < len(ks) - 1 else "",
                    "num_lidar_pts": num_pts[(i, k)],
                    "num_radar_pts": 0,
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------
# the whole dataset
# ---------------------------------------------------------------------------------------------


def _static_tables(seed: int, logs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    maps: dict[str, dict[str, Any]] = {}
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
    return {
        "attribute": [
            {"token": token(0, "attribute", a), "name": a, "description": d} for a, d in ATTRIBUTES
        ],
        "category": [
            {"token": token(0, "category", c), "name": c, "description": d} for c, d in CATEGORIES
        ],
        "visibility": [{"token": t, "level": lv, "description": d} for t, lv, d in VISIBILITY],
        "sensor": [
            {"token": token(0, "sensor", ch), "channel": ch, "modality": mod} for ch, mod in SENSORS
        ],
        "map": list(maps.values()),
    }


def _map_png(seed: int, location: str) -> bytes:
    """A small semantic-prior PNG (drivable area as a few random straight roads)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, int(hashlib.md5(location.encode()).hexdigest()[:8], 16)])
    img = Image.new("L", (200, 200), 0)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, 200, 4))
        draw.line((x0, y0, x1, y1), fill=255, width=int(rng.integers(3, 8)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


#: Written last into every synthetic root; ``--overwrite`` replaces only directories that hold it.
MARKER = "synth_config.json"


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} is a file: choose a directory for --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(
                f"output directory {out} exists and is not empty: "
                "choose another --out or pass --overwrite"
            )
        if not (out / MARKER).is_file():
            raise UserError(
                f"output directory {out} was not written by labeldistill synth (no {MARKER}): "
                "refusing to replace it; choose another --out"
            )


def generate(
    out: str | Path, cfg: SynthConfig, workers: int | None = None, overwrite: bool = False
) -> Path:
    """Write the synthetic dataset (``cfg.version``) to ``out`` and return its path.

    The dataset is built in a temporary directory beside ``out`` and renamed at the end.
    ``workers``: processes (default: all cores; 1 = in this process); scenes run in parallel.
    Raises UserError if ``out`` exists and is not empty (unless ``overwrite``).
    """
    from tqdm import tqdm

    cfg.validate()
    if workers is not None and int(workers) < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    out = Path(out).absolute()
    _check_out(out, overwrite)
    check_output_dir(out.parent, "--out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        subs = ["samples/LIDAR_TOP", "sweeps/LIDAR_TOP", "maps", cfg.version]
        subs += [f"samples/{c}" for c in CAMERA_NAMES]
        if cfg.segmentation:
            subs += [f"{SEGMENTATION_DIR}/{c}" for c in CAMERA_NAMES]
        for sub in subs:
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        n_scenes = len(scene_list(cfg))
        workers = (os.cpu_count() or 1) if workers is None else int(workers)
        workers = min(workers, n_scenes)
        results: dict[int, dict[str, list[dict[str, Any]]]] = {}
        jobs = [(str(tmp), cfg, i) for i in range(n_scenes)]
        bar = tqdm(total=n_scenes, desc="synth scenes", unit="scene")
        try:
            if workers == 1:
                for job in jobs:
                    results[job[2]] = _scene_job(job)
                    bar.update()
            else:
                import multiprocessing as mp

                with ProcessPoolExecutor(
                    workers,
                    mp_context=mp.get_context("spawn"),
                    initializer=die_with_parent,
                    initargs=(os.getpid(),),
                ) as pool:
                    futs = {pool.submit(_scene_job, job): job[2] for job in jobs}
                    for fut in as_completed(futs):
                        results[futs[fut]] = fut.result()
                        bar.update()
        finally:
            bar.close()
        tables: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLES}
        for i in range(n_scenes):
            for name, recs in results[i].items():
                tables[name].extend(recs)
        tables.update(_static_tables(cfg.seed, tables["log"]))
        for rec in tables["map"]:
            loc = next(r["location"] for r in tables["log"] if r["token"] == rec["log_tokens"][0])
            (tmp / rec["filename"]).write_bytes(_map_png(cfg.seed, loc))
        for name in TABLES:
            (tmp / cfg.version / f"{name}.json").write_text(json.dumps(tables[name], indent=1))
        (tmp / MARKER).write_text(json.dumps(asdict(cfg), indent=1, sort_keys=True))
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n_ann = len(tables["sample_annotation"])
    log.info(
        "wrote %s: %d scenes, %d samples, %d annotations",
        out,
        n_scenes,
        len(tables["sample"]),
        n_ann,
    )
    return out
