"""Synthetic nuScenes-format dataset (``labeldistill synth``; DESIGN.md section 5): the entry
point :func:`generate`, the scene list, and :func:`build_scene` run by the parallel workers.

Writes a ``v1.0-mini`` tree that ``nuscenes.nuscenes.NuScenes`` loads unchanged: the 13 JSON
tables, the 10 official mini scene names (8 mini_train + 2 mini_val) (or a ``v1.0-trainval``
tree with a subset of the official train / val scene names), key samples at 2 Hz with
six rendered camera JPEGs and a ray-cast LIDAR_TOP scan, LiDAR sweeps at 20 Hz in
``sweeps/LIDAR_TOP``, a map PNG per location. One 3D world per scene (:mod:`.world`) is
seen by all sensors (:mod:`.camera`, :mod:`.lidar`); annotations carry tracks, attributes,
visibility and ``num_lidar_pts`` equal to what the devkit's ``points_in_box`` counts in the key
scan (points within 2 mm of an annotated box surface are dropped from the scan so that float32
round-off in any consumer cannot flip a count).

Deterministic: every scene is a pure function of (seed, scene index), so the output is
byte-identical whatever the number of worker processes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from labeldistill.errors import UserError
from labeldistill.geometry import matrix_to_quaternion, quaternion_to_matrix, yaw_to_quaternion
from labeldistill.io import check_output_dir, die_with_parent
from labeldistill.nuscenes_schema import (
    CAMERA_CHANNELS,
    LIDAR_CHANNEL,
    LOCATIONS,
    MINI_SCENES,
    TABLES,
)
from labeldistill.synth import tables
from labeldistill.synth.camera import (
    CAMERA_RIG,
    CAMERA_TIME_OFFSET,
    SEGMENTATION_DIR,
    camera_intrinsic,
    camera_rotation,
    render_camera,
    segmentation_map,
    segmentation_path,
)
from labeldistill.synth.lidar import (
    AMBIGUITY_MARGIN,
    LIDAR_TRANSLATION,
    LIDAR_YAW,
    points_in_boxes_exact,
    scan_lidar,
)
from labeldistill.synth.tables import Row, token
from labeldistill.synth.world import (
    ANNOTATION_RANGE,
    EXTRA_SWEEPS,
    KEY_DT_US,
    SWEEP_DT_US,
    SWEEPS_PER_KEY,
    World,
    build_world,
)

log = logging.getLogger(__name__)

VERSION = "v1.0-mini"
#: Versions the generator writes: the 10 mini scenes, or a subset of the official trainval
#: scene names (``SynthConfig.train_scenes`` / ``val_scenes``).
VERSIONS = ("v1.0-mini", "v1.0-trainval")
#: The tables whose rows each scene contributes (the others are written once per set).
SCENE_TABLES: tuple[str, ...] = (
    "log",
    "scene",
    "sample",
    "sample_data",
    "ego_pose",
    "calibrated_sensor",
    "instance",
    "sample_annotation",
)
#: Written last into every synthetic root; ``--overwrite`` replaces only directories that hold it.
MARKER = "synth_config.json"


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
    :func:`~labeldistill.synth.camera.segmentation_path`; not part of the nuScenes format, read
    by stage 0).
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

    v1.0-mini: :data:`~labeldistill.nuscenes_schema.MINI_SCENES`. v1.0-trainval: the first
    ``train_scenes`` of the devkit's official train list, then the first ``val_scenes`` of its
    val list, in the lists' order; the locations cycle through
    :data:`~labeldistill.nuscenes_schema.LOCATIONS` (the real ones are not in the split lists).
    """
    if cfg.version == VERSION:
        return MINI_SCENES
    # optional here: nuscenes devkit (only its official trainval scene lists are needed)
    from nuscenes.utils.splits import create_splits_scenes

    with contextlib.redirect_stdout(io.StringIO()):
        splits = create_splits_scenes(verbose=False)
    names = list(splits["train"][: cfg.train_scenes]) + list(splits["val"][: cfg.val_scenes])
    return tuple((n, LOCATIONS[i % len(LOCATIONS)]) for i, n in enumerate(names))


def _yaw_quat(yaw: float) -> list[float]:
    """Rotation about +z as a JSON list (w, x, y, z)."""
    return [float(v) for v in yaw_to_quaternion(yaw)]


# ---------------------------------------------------------------------------------------------
# one scene (runs in a worker process), step by step
# ---------------------------------------------------------------------------------------------


@dataclass
class _Scene:
    """What every step of one scene shares: its identity, world and time base."""

    root: Path
    cfg: SynthConfig
    index: int
    name: str
    location: str
    world: World
    logfile: str
    t0_us: int  # timestamp of the first key sample
    sample_tokens: list[str]
    rows: dict[str, list[Row]] = field(default_factory=lambda: {k: [] for k in SCENE_TABLES})

    @property
    def seed(self) -> int:
        return self.cfg.seed

    @property
    def num_samples(self) -> int:
        return self.cfg.samples_per_scene

    def ego_pose_row(self, tok: str, t: float, ts: int) -> Row:
        """The ego pose at scene time ``t`` (seconds), timestamp ``ts``."""
        pose = self.world.ego_pose(t)
        return tables.ego_pose_row(
            tok,
            ts,
            _yaw_quat(self.world.road.heading),
            [float(pose[0, 3]), float(pose[1, 3]), 0.0],
        )


@dataclass
class _Rig:
    """Calibration of the scene's sensors: calibrated_sensor rows by channel, camera
    ego_from_camera 4x4 and 3x3 intrinsics."""

    calib: dict[str, Row]
    ego_from_cam: dict[str, np.ndarray]
    intrinsics: dict[str, np.ndarray]


@dataclass
class _Tracks:
    """Annotated objects: ``in_range[k]`` object indices of key sample k; each run of
    consecutive samples of an object is an instance (track)."""

    in_range: dict[int, list[int]]
    runs: dict[tuple[int, int], int]  # (object, sample) -> run id
    run_samples: dict[int, list[int]]
    run_object: dict[int, int]
    ann_token: dict[tuple[int, int], str]
    inst_token: dict[int, str]
    ann_box: dict[tuple[int, int], Row]  # translation, size, rotation


def _open_scene(root: Path, cfg: SynthConfig, scene_index: int) -> _Scene:
    """Step 1: the scene's name, world, log and key samples; its log, sample and scene rows."""
    seed, K = cfg.seed, cfg.samples_per_scene
    name, location = scene_list(cfg)[scene_index]
    world = build_world(seed, scene_index, K)
    logfile, vehicle, date, t0_us = tables.log_identity(seed, scene_index, location)
    log_token = token(seed, "log", name)
    scene_token = token(seed, "scene", name)
    sample_tokens = [token(seed, "sample", name, k) for k in range(K)]
    scene = _Scene(root, cfg, scene_index, name, location, world, logfile, t0_us, sample_tokens)
    rows = scene.rows
    rows["log"].append(tables.log_row(log_token, logfile, vehicle, date, location))
    timestamps = [t0_us + k * KEY_DT_US for k in range(K)]
    rows["sample"].extend(tables.sample_rows(sample_tokens, timestamps, scene_token))
    rows["scene"].append(
        tables.scene_row(scene_token, log_token, sample_tokens, name, world.description)
    )
    return scene


def _calibrate(scene: _Scene) -> _Rig:
    """Step 2: the calibrated_sensor rows of the LiDAR and the six cameras."""
    cfg = scene.cfg
    calib: dict[str, Row] = {}
    calib[LIDAR_CHANNEL] = tables.calibrated_sensor_row(
        token(scene.seed, "calibrated_sensor", scene.name, LIDAR_CHANNEL),
        LIDAR_CHANNEL,
        LIDAR_TRANSLATION,
        _yaw_quat(LIDAR_YAW),
        [],
    )
    ego_from_cam: dict[str, np.ndarray] = {}
    intrinsics: dict[str, np.ndarray] = {}
    for cam in CAMERA_CHANNELS:
        trans, yaw_deg, pitch_deg, _ = CAMERA_RIG[cam]
        q = [float(v) for v in matrix_to_quaternion(camera_rotation(yaw_deg, pitch_deg))]
        k_mat = camera_intrinsic(
            cam, cfg.image_width, cfg.image_height, cfg.fov_front_deg, cfg.fov_back_deg
        )
        calib[cam] = tables.calibrated_sensor_row(
            token(scene.seed, "calibrated_sensor", scene.name, cam), cam, trans, q, k_mat.tolist()
        )
        m = np.eye(4)
        m[:3, :3] = quaternion_to_matrix(q)
        m[:3, 3] = trans
        ego_from_cam[cam] = m
        intrinsics[cam] = k_mat
    scene.rows["calibrated_sensor"].extend(calib.values())
    return _Rig(calib, ego_from_cam, intrinsics)


def _track_objects(scene: _Scene) -> _Tracks:
    """Step 3: the annotated objects of each key sample (within ``ANNOTATION_RANGE`` of the
    ego), their tracks (contiguous runs of samples of one object) and boxes."""
    world, seed, name, K = scene.world, scene.seed, scene.name, scene.num_samples
    key_times = [0.5 * k for k in range(K)]
    in_range: dict[int, list[int]] = {}
    for k, t in enumerate(key_times):
        ego_xy = world.ego_pose(t)[:2, 3]
        in_range[k] = [
            i
            for i, o in enumerate(world.objects)
            if o.cls >= 0 and float(np.hypot(*(o.center(t)[:2] - ego_xy))) <= ANNOTATION_RANGE
        ]
    runs: dict[tuple[int, int], int] = {}
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
    ann_box: dict[tuple[int, int], Row] = {}
    for i, k in runs:
        o = world.objects[i]
        c = o.center(key_times[k])
        ann_box[(i, k)] = {
            "translation": [round(float(c[0]), 3), round(float(c[1]), 3), round(float(c[2]), 3)],
            "size": list(o.size),
            "rotation": _yaw_quat(o.yaw),
        }
    return _Tracks(in_range, runs, run_samples, run_object, ann_token, inst_token, ann_box)


def _key_scan_counts(
    scene: _Scene, pts: np.ndarray, pose_row: Row, tracks: _Tracks, k: int
) -> tuple[np.ndarray, dict[tuple[int, int], int]]:
    """Points of a key scan [P, 5] without those within ``AMBIGUITY_MARGIN`` of an annotated
    box surface, and the LiDAR points inside each annotated box of key sample ``k``."""
    ego_from_lidar = np.eye(4)
    ego_from_lidar[:3, :3] = quaternion_to_matrix(_yaw_quat(LIDAR_YAW))
    ego_from_lidar[:3, 3] = LIDAR_TRANSLATION
    global_from_ego = np.eye(4)
    global_from_ego[:3, :3] = quaternion_to_matrix(pose_row["rotation"])
    global_from_ego[:3, 3] = pose_row["translation"]
    m = global_from_ego @ ego_from_lidar
    pg = pts[:, :3].astype(np.float64) @ m[:3, :3].T + m[:3, 3]
    keys = [(i, k) for i in tracks.in_range[k]]
    boxes = [
        (
            np.asarray(tracks.ann_box[key]["translation"]),
            np.asarray(tracks.ann_box[key]["size"]),
            quaternion_to_matrix(tracks.ann_box[key]["rotation"]),
        )
        for key in keys
    ]
    inside, ambiguous = points_in_boxes_exact(pg, boxes, AMBIGUITY_MARGIN)
    inside = inside[:, ~ambiguous]
    counts = {key: int(row.sum()) for key, row in zip(keys, inside)}
    return pts[~ambiguous], counts


def _write_lidar(scene: _Scene, rig: _Rig, tracks: _Tracks) -> dict[tuple[int, int], int]:
    """Step 4: LiDAR sweeps at 20 Hz from ``EXTRA_SWEEPS`` before the first to as many after
    the last key sample -> the point files, their ego_pose and sample_data rows; returns the
    LiDAR points in each annotated box of the key scans."""
    cfg, seed, name, K = scene.cfg, scene.seed, scene.name, scene.num_samples
    js = list(range(-EXTRA_SWEEPS, SWEEPS_PER_KEY * (K - 1) + EXTRA_SWEEPS + 1))
    lidar_tokens = [token(seed, "sample_data", name, LIDAR_CHANNEL, j) for j in js]
    num_pts: dict[tuple[int, int], int] = {}
    for n, j in enumerate(js):
        t = j * SWEEP_DT_US / 1e6
        ts = scene.t0_us + j * SWEEP_DT_US
        rng = np.random.default_rng([seed, scene.index, j + 1000, 1])
        pts = scan_lidar(scene.world, t, cfg.lidar_azimuth_steps, rng)
        key = j % SWEEPS_PER_KEY == 0 and 0 <= j <= SWEEPS_PER_KEY * (K - 1)
        k_near = min(max(int(math.floor(j / SWEEPS_PER_KEY + 0.5)), 0), K - 1)
        pose_row = scene.ego_pose_row(lidar_tokens[n], t, ts)
        if key:
            pts, counts = _key_scan_counts(scene, pts, pose_row, tracks, j // SWEEPS_PER_KEY)
            num_pts.update(counts)
        folder = "samples" if key else "sweeps"
        filename = f"{folder}/{LIDAR_CHANNEL}/{scene.logfile}__{LIDAR_CHANNEL}__{ts}.pcd.bin"
        (scene.root / filename).write_bytes(pts.tobytes())
        scene.rows["ego_pose"].append(pose_row)
        scene.rows["sample_data"].append(
            tables.sample_data_row(
                lidar_tokens,
                n,
                sample_token=scene.sample_tokens[k_near],
                calibrated_sensor_token=rig.calib[LIDAR_CHANNEL]["token"],
                timestamp=ts,
                fileformat="pcd",
                is_key_frame=bool(key),
                height=0,
                width=0,
                filename=filename,
            )
        )
    return num_pts


def _encode(image: np.ndarray, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **options)
    return buf.getvalue()


def _write_cameras(scene: _Scene, rig: _Rig) -> dict[tuple[int, int], list[int]]:
    """Step 5: the six cameras at every key sample -> JPEGs (and class maps), their ego_pose
    and sample_data rows; returns [visible, footprint] pixels per (object, sample)."""
    cfg, world, seed, K = scene.cfg, scene.world, scene.seed, scene.num_samples
    vis_pix: dict[tuple[int, int], list[int]] = {}
    for ci, cam in enumerate(CAMERA_CHANNELS):
        cam_tokens = [token(seed, "sample_data", scene.name, cam, k) for k in range(K)]
        for k in range(K):
            offset = CAMERA_TIME_OFFSET[cam]
            ts = scene.t0_us + k * KEY_DT_US + int(round(offset * 1e6))
            t = (ts - scene.t0_us) / 1e6
            rng = np.random.default_rng([seed, scene.index, k, ci, 2])
            out = render_camera(
                world,
                t,
                rig.ego_from_cam[cam],
                rig.intrinsics[cam],
                cfg.image_width,
                cfg.image_height,
                rng,
            )
            for i, fp in out.footprint.items():
                acc = vis_pix.setdefault((i, k), [0, 0])
                acc[0] += out.visible[i]
                acc[1] += fp
            filename = f"samples/{cam}/{scene.logfile}__{cam}__{ts}.jpg"
            lo, hi = world.style.jpeg_quality
            quality = int(rng.integers(lo, hi + 1))
            (scene.root / filename).write_bytes(_encode(out.image, "JPEG", quality=quality))
            if cfg.segmentation:
                seg = segmentation_map(out.object_ids, [o.cls for o in world.objects])
                (scene.root / segmentation_path(filename)).write_bytes(_encode(seg, "PNG"))
            scene.rows["ego_pose"].append(scene.ego_pose_row(cam_tokens[k], t, ts))
            scene.rows["sample_data"].append(
                tables.sample_data_row(
                    cam_tokens,
                    k,
                    sample_token=scene.sample_tokens[k],
                    calibrated_sensor_token=rig.calib[cam]["token"],
                    timestamp=ts,
                    fileformat="jpg",
                    is_key_frame=True,
                    height=cfg.image_height,
                    width=cfg.image_width,
                    filename=filename,
                )
            )
    return vis_pix


def _write_annotations(
    scene: _Scene,
    tracks: _Tracks,
    num_pts: dict[tuple[int, int], int],
    vis_pix: dict[tuple[int, int], list[int]],
) -> None:
    """Step 6: the instance rows (one per track) and the sample_annotation rows."""
    world = scene.world
    for rid, ks in tracks.run_samples.items():
        i = tracks.run_object[rid]
        toks = [tracks.ann_token[(i, k)] for k in ks]
        scene.rows["instance"].append(
            tables.instance_row(tracks.inst_token[rid], world.objects[i].category, toks)
        )
    for k in range(scene.num_samples):
        for i in tracks.in_range[k]:
            rid = tracks.runs[(i, k)]
            ks = tracks.run_samples[rid]
            o = world.objects[i]
            vis, fp = vis_pix.get((i, k), [0, 0])
            scene.rows["sample_annotation"].append(
                tables.sample_annotation_row(
                    [tracks.ann_token[(i, kk)] for kk in ks],
                    ks.index(k),
                    sample_token=scene.sample_tokens[k],
                    instance_token=tracks.inst_token[rid],
                    visibility_token=tables.visibility_level(vis, fp),
                    attribute=o.attribute,
                    box=tracks.ann_box[(i, k)],
                    num_lidar_pts=num_pts[(i, k)],
                )
            )


def build_scene(root: Path, cfg: SynthConfig, scene_index: int) -> dict[str, list[Row]]:
    """Simulate, render and ray-cast one scene; write its files under ``root``; return its rows
    of the per-scene tables (:data:`SCENE_TABLES`)."""
    scene = _open_scene(root, cfg, scene_index)
    rig = _calibrate(scene)
    tracks = _track_objects(scene)
    num_pts = _write_lidar(scene, rig, tracks)
    vis_pix = _write_cameras(scene, rig)
    _write_annotations(scene, tracks, num_pts, vis_pix)
    return scene.rows


def _scene_job(args: tuple[str, SynthConfig, int]) -> dict[str, list[Row]]:
    root, cfg, scene_index = args
    try:  # small matrices: BLAS threads only contend with the other scene processes
        # optional here: threadpoolctl (comes with scikit-learn, a devkit dependency)
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn (devkit dep)
        return build_scene(Path(root), cfg, scene_index)
    with threadpool_limits(1):
        return build_scene(Path(root), cfg, scene_index)


# ---------------------------------------------------------------------------------------------
# the whole dataset
# ---------------------------------------------------------------------------------------------


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


def _run_scenes(tmp: Path, cfg: SynthConfig, n_scenes: int, workers: int) -> dict[int, Any]:
    """Scene index -> its rows; scenes built in ``workers`` processes (1: in this one)."""
    results: dict[int, dict[str, list[Row]]] = {}
    jobs = [(str(tmp), cfg, i) for i in range(n_scenes)]
    bar = tqdm(total=n_scenes, desc="synth scenes", unit="scene")
    try:
        if workers == 1:
            for job in jobs:
                results[job[2]] = _scene_job(job)
                bar.update()
        else:
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
    return results


def _write_tables(tmp: Path, cfg: SynthConfig, results: dict[int, Any]) -> dict[str, list[Row]]:
    """Merge the scenes' rows (in scene order), add the set-wide tables, write the 13 JSON
    files and the map PNGs -> the tables."""
    all_rows: dict[str, list[Row]] = {name: [] for name in TABLES}
    for i in range(len(results)):
        for name, recs in results[i].items():
            all_rows[name].extend(recs)
    all_rows["attribute"] = tables.attribute_table()
    all_rows["category"] = tables.category_table()
    all_rows["visibility"] = tables.visibility_table()
    all_rows["sensor"] = tables.sensor_table()
    all_rows["map"] = tables.map_table(cfg.seed, all_rows["log"])
    for rec in all_rows["map"]:
        loc = next(r["location"] for r in all_rows["log"] if r["token"] == rec["log_tokens"][0])
        (tmp / rec["filename"]).write_bytes(tables.map_png(cfg.seed, loc))
    for name in TABLES:
        (tmp / cfg.version / f"{name}.json").write_text(json.dumps(all_rows[name], indent=1))
    return all_rows


def generate(
    out: str | Path, cfg: SynthConfig, workers: int | None = None, overwrite: bool = False
) -> Path:
    """Write the synthetic dataset (``cfg.version``) to ``out`` and return its path.

    The dataset is built in a temporary directory beside ``out`` and renamed at the end.
    ``workers``: processes (default: all cores; 1 = in this process); scenes run in parallel.
    Raises UserError if ``out`` exists and is not empty (unless ``overwrite``).
    """
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
        subs = [f"samples/{LIDAR_CHANNEL}", f"sweeps/{LIDAR_CHANNEL}", "maps", cfg.version]
        subs += [f"samples/{c}" for c in CAMERA_CHANNELS]
        if cfg.segmentation:
            subs += [f"{SEGMENTATION_DIR}/{c}" for c in CAMERA_CHANNELS]
        for sub in subs:
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        n_scenes = len(scene_list(cfg))
        workers = (os.cpu_count() or 1) if workers is None else int(workers)
        workers = min(workers, n_scenes)
        results = _run_scenes(tmp, cfg, n_scenes, workers)
        all_rows = _write_tables(tmp, cfg, results)
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
    log.info(
        "wrote %s: %d scenes, %d samples, %d annotations",
        out,
        n_scenes,
        len(all_rows["sample"]),
        len(all_rows["sample_annotation"]),
    )
    return out
