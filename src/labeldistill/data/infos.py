"""Info files: one dict per key sample in the layout of METHOD.md 3.1 (BEVDepth's ``gen_info``).

On disk we write a versioned superset ``{'schema_version', 'meta', 'infos'}`` whose ``infos``
list is exactly the legacy layout; :func:`load_infos` also reads the plain lists that
BEVDepth/LabelDistill users already have, and mmdetection3d >= 1.1 info files
(``{'metainfo', 'data_list'}``, converted by :func:`infos_from_mmdet3d`). Files are unpickled
with an allow-list (builtins and numpy arrays only), so an info file can never run code.

Info dict (one per key sample, scenes in ``nusc.scene`` order, samples in time order)::

    sample_token, timestamp, scene_token
    cam_infos      {cam: {sample_token, ego_pose, timestamp, is_key_frame, height, width,
                          filename, calibrated_sensor}}           the 6 CAMERA_CHANNELS
    lidar_infos    {'LIDAR_TOP': {sample_token, ego_pose, timestamp, filename, calibrated_sensor}}
    cam_sweeps     [{cam: sweep info (cam_infos fields)}]          <= 6 slots, newest first
    lidar_sweeps   [{'LIDAR_TOP': {..., is_key_frame, ...}}]       <= 5 past, then <= 5 future
    ann_infos      [sample_annotation record + 'velocity' (3,) float64, global frame, NaN -> 0]
"""

from __future__ import annotations

import datetime
import io
import logging
import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from labeldistill.errors import DataError
from labeldistill.geometry import matrix_to_quaternion, rotz
from labeldistill.io import atomic_pickle
from labeldistill.nuscenes_schema import CAMERA_CHANNELS, CLASS_CATEGORY, LIDAR_CHANNEL

log = logging.getLogger(__name__)

#: Version of the on-disk wrapper written by :func:`save_infos` (not of the info dicts).
SCHEMA_VERSION = 1

MAX_CAM_SWEEPS = 6
LIDAR_PAST_SWEEPS = 5
LIDAR_FUTURE_SWEEPS = 5

#: Keys every info dict must have (legacy files of the test split may lack the sweeps).
REQUIRED_KEYS: tuple[str, ...] = (
    "sample_token",
    "timestamp",
    "scene_token",
    "cam_infos",
    "lidar_infos",
)


# ---------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------


def _cam_info(nusc: Any, sd: dict) -> dict:
    """Info of one camera sample_data record (its own pose and calibration)."""
    return {
        "sample_token": sd["sample_token"],
        "ego_pose": dict(nusc.get("ego_pose", sd["ego_pose_token"])),
        "timestamp": sd["timestamp"],
        "is_key_frame": sd["is_key_frame"],
        "height": sd["height"],
        "width": sd["width"],
        "filename": sd["filename"],
        "calibrated_sensor": dict(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])),
    }


def _lidar_info(nusc: Any, sd: dict, *, with_key_flag: bool) -> dict:
    """Info of one LiDAR sample_data record; sweeps carry ``is_key_frame``, the key scan not."""
    info: dict[str, Any] = {
        "sample_token": sd["sample_token"],
        "ego_pose": dict(nusc.get("ego_pose", sd["ego_pose_token"])),
        "timestamp": sd["timestamp"],
    }
    if with_key_flag:
        info["is_key_frame"] = sd["is_key_frame"]
    info["filename"] = sd["filename"]
    info["calibrated_sensor"] = dict(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]))
    return info


def _cam_sweeps(nusc: Any, sample: dict) -> list[dict]:
    """Up to MAX_CAM_SWEEPS slots {cam: info}: walk ``prev`` from each key image while the
    sweep still belongs to the key's sample; a camera that runs out is absent from later slots.
    """
    current = {cam: nusc.get("sample_data", sample["data"][cam]) for cam in CAMERA_CHANNELS}
    alive = set(CAMERA_CHANNELS)
    sweeps: list[dict] = []
    for _ in range(MAX_CAM_SWEEPS):
        slot: dict[str, dict] = {}
        for cam in CAMERA_CHANNELS:
            if cam not in alive:
                continue
            sd = current[cam]
            if sd["prev"] == "":
                alive.discard(cam)
                continue
            prev = nusc.get("sample_data", sd["prev"])
            if prev["sample_token"] != sample["token"]:
                alive.discard(cam)
                continue
            current[cam] = prev
            slot[cam] = _cam_info(nusc, prev)
        if not slot:
            break
        sweeps.append(slot)
    return sweeps


def _lidar_sweeps(nusc: Any, sample: dict) -> list[dict]:
    """The 5-past + 5-future slot rule of METHOD.md 3.1, truncated at the first empty slot.

    Past slots walk ``prev`` from the key scan while the sweep belongs to the key's sample;
    future slots walk ``next`` while the sweep's sample is in the key's scene.
    """
    slots: list[dict | None] = [None] * (LIDAR_PAST_SWEEPS + LIDAR_FUTURE_SWEEPS)
    key = nusc.get("sample_data", sample["data"][LIDAR_CHANNEL])
    sd = key
    for i in range(LIDAR_PAST_SWEEPS):
        if sd["prev"] == "":
            break
        sd = nusc.get("sample_data", sd["prev"])
        if sd["sample_token"] != sample["token"]:
            break
        slots[i] = {LIDAR_CHANNEL: _lidar_info(nusc, sd, with_key_flag=True)}
    sd = key
    for i in range(LIDAR_PAST_SWEEPS, LIDAR_PAST_SWEEPS + LIDAR_FUTURE_SWEEPS):
        if sd["next"] == "":
            break
        sd = nusc.get("sample_data", sd["next"])
        if nusc.get("sample", sd["sample_token"])["scene_token"] != sample["scene_token"]:
            break
        slots[i] = {LIDAR_CHANNEL: _lidar_info(nusc, sd, with_key_flag=True)}
    out: list[dict] = []
    for slot in slots:
        if slot is None:
            break
        out.append(slot)
    return out


def _ann_infos(nusc: Any, sample: dict) -> list[dict]:
    """Raw sample_annotation records (global frame) plus the devkit velocity, NaN -> 0."""
    anns = []
    for token in sample["anns"]:
        ann = dict(nusc.get("sample_annotation", token))
        velocity = np.asarray(nusc.box_velocity(token), dtype=np.float64)
        if np.isnan(velocity).any():
            velocity = np.zeros(3, dtype=np.float64)
        ann["velocity"] = velocity
        anns.append(ann)
    return anns


def sample_info(nusc: Any, sample: dict) -> dict:
    """The METHOD.md 3.1 info dict of one sample record."""
    cam_infos = {
        cam: _cam_info(nusc, nusc.get("sample_data", sample["data"][cam]))
        for cam in CAMERA_CHANNELS
    }
    lidar_sd = nusc.get("sample_data", sample["data"][LIDAR_CHANNEL])
    return {
        "sample_token": sample["token"],
        "timestamp": sample["timestamp"],
        "scene_token": sample["scene_token"],
        "cam_infos": cam_infos,
        "lidar_infos": {LIDAR_CHANNEL: _lidar_info(nusc, lidar_sd, with_key_flag=False)},
        "cam_sweeps": _cam_sweeps(nusc, sample),
        "lidar_sweeps": _lidar_sweeps(nusc, sample),
        "ann_infos": _ann_infos(nusc, sample),
    }


def build_infos(nusc: Any, scene_names: Iterable[str], progress: bool = False) -> list[dict]:
    """Info dicts of every key sample of the named scenes (those present in ``nusc``).

    Scenes are visited in ``nusc.scene`` order and samples by ``next`` from
    ``first_sample_token``, so the list is ordered by scene and time. Names not in this
    dataroot are ignored (the caller decides whether an empty result is an error).
    """
    wanted = set(scene_names)
    scenes = [s for s in nusc.scene if s["name"] in wanted]
    bar = None
    if progress:
        bar = tqdm(
            total=sum(s["nbr_samples"] for s in scenes), desc="infos", unit="sample", disable=None
        )
    infos: list[dict] = []
    try:
        for scene in scenes:
            token = scene["first_sample_token"]
            while token:
                try:
                    sample = nusc.get("sample", token)
                    infos.append(sample_info(nusc, sample))
                except (KeyError, TypeError, IndexError) as exc:
                    folder = Path(nusc.dataroot) / nusc.version
                    raise DataError(
                        f"the {nusc.version} tables in {folder} are inconsistent: sample {token} "
                        f"of scene {scene['name']} refers to a record that does not exist "
                        f"({type(exc).__name__}: {exc}): re-download or regenerate the dataset"
                    ) from None
                if bar is not None:
                    bar.update(1)
                token = sample["next"]
    finally:
        if bar is not None:
            bar.close()
    return infos


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------


def info_path(directory: str | Path, split: str) -> Path:
    """``directory / nuscenes_infos_<split>.pkl`` (the names BEVDepth users already have)."""
    return Path(directory) / f"nuscenes_infos_{split}.pkl"


def save_infos(path: str | Path, infos: list[dict], meta: dict[str, Any]) -> Path:
    """Write ``{'schema_version', 'meta', 'infos'}`` atomically; ``meta`` gets ``created``
    (UTC, ISO 8601) when it lacks it. Returns the path."""
    meta = dict(meta)
    meta.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat())
    payload = {"schema_version": SCHEMA_VERSION, "meta": meta, "infos": list(infos)}
    atomic_pickle(path, payload)
    return Path(path)


@dataclass
class InfoFile:
    """Contents of an info file: the info dicts, the wrapper's meta data and schema version
    (``meta == {}`` and ``schema_version == 0`` for a legacy plain list)."""

    infos: list[dict]
    meta: dict[str, Any] = field(default_factory=dict)
    schema_version: int = 0


_SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "complex"),
    ("collections", "OrderedDict"),
}


class _InfoUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals an info file can hold."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise DataError(
            f"info file {self._path} holds a Python object {module}.{name}, which no info file "
            "contains (refusing to load it): regenerate it with `labeldistill prepare`"
        )


def _regen(path: Path) -> str:
    return f"regenerate {path.name} with `labeldistill prepare --dataroot DIR --version V`"


def read_info_file(path: str | Path) -> InfoFile:
    """Read an info file of ours or a legacy plain list -> :class:`InfoFile`.

    Raises DataError (one line naming the file and the fix) for a missing file, a file that is
    not a pickle, an unknown layout, a newer schema or info dicts without the required keys.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"info file {path} does not exist: {_regen(path)}")
    try:
        data = _InfoUnpickler(io.BytesIO(path.read_bytes()), path).load()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"info file {path} is not a readable pickle ({type(exc).__name__}: {exc}): "
            f"{_regen(path)}"
        ) from None

    if isinstance(data, list):
        out = InfoFile(infos=data)
    elif isinstance(data, dict) and "data_list" in data:
        meta = {"source_layout": "mmdet3d", "metainfo": dict(data.get("metainfo") or {})}
        out = InfoFile(infos=infos_from_mmdet3d(data, path), meta=meta)
    elif isinstance(data, dict) and "schema_version" in data:
        version = data["schema_version"]
        if not isinstance(version, int) or version < 1:
            raise DataError(
                f"info file {path} has an invalid schema_version {version!r}: {_regen(path)}"
            )
        if version > SCHEMA_VERSION:
            raise DataError(
                f"info file {path} has schema version {version}, newer than this labeldistill "
                f"reads ({SCHEMA_VERSION}): upgrade labeldistill or {_regen(path)}"
            )
        if not isinstance(data.get("infos"), list) or not isinstance(data.get("meta", {}), dict):
            raise DataError(
                f"info file {path} (schema {version}) lacks its 'infos' list: {_regen(path)}"
            )
        out = InfoFile(infos=data["infos"], meta=dict(data.get("meta", {})), schema_version=version)
    else:
        what = (
            f"a dict with keys {sorted(map(str, data))[:6]}"
            if isinstance(data, dict)
            else f"a {type(data).__name__}"
        )
        raise DataError(
            f"info file {path} has an unknown layout ({what}; expected a list of info dicts, "
            f"a labeldistill info file or an mmdetection3d {{'metainfo', 'data_list'}} file): "
            f"{_regen(path)}"
        )
    _check_infos(out.infos, path)
    return out


def _check_infos(infos: list, path: Path) -> None:
    for i, info in enumerate(infos):
        if not isinstance(info, dict):
            raise DataError(
                f"info file {path}: entry {i} is a {type(info).__name__}, not an info dict: "
                f"{_regen(path)}"
            )
        missing = [k for k in REQUIRED_KEYS if k not in info]
        if missing:
            raise DataError(
                f"info file {path}: entry {i} lacks {', '.join(missing)} (not the nuScenes "
                f"info layout): {_regen(path)}"
            )
        if not isinstance(info["cam_infos"], dict) or LIDAR_CHANNEL not in info["lidar_infos"]:
            raise DataError(
                f"info file {path}: entry {i} has malformed cam_infos/lidar_infos: {_regen(path)}"
            )
        problem = _malformed_field(info)
        if problem:
            raise DataError(
                f"info file {path}: entry {i} (sample {info.get('sample_token')!r}): {problem}: "
                f"{_regen(path)}"
            )


def _is_numbers(value: Any, n: int) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == n
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def _sensor_problem(rec: Any, where: str, camera: bool) -> str:
    """What is wrong with one sensor record of an info (cam or LiDAR), or ''."""
    if not isinstance(rec, dict):
        return f"{where} must be a mapping, got {type(rec).__name__}"
    if not isinstance(rec.get("filename"), str):
        return f"{where}.filename must be a string"
    if not isinstance(rec.get("timestamp"), int):
        return f"{where}.timestamp must be an integer"
    for pose in ("ego_pose", "calibrated_sensor"):
        value = rec.get(pose)
        if not isinstance(value, dict):
            return f"{where}.{pose} must be a mapping"
        if not _is_numbers(value.get("translation"), 3):
            return f"{where}.{pose}.translation must be a list of 3 numbers"
        if not _is_numbers(value.get("rotation"), 4):
            return f"{where}.{pose}.rotation must be a list of 4 numbers (w, x, y, z)"
    if camera:
        k = rec["calibrated_sensor"].get("camera_intrinsic")
        if not (isinstance(k, (list, tuple)) and len(k) == 3 and all(_is_numbers(r, 3) for r in k)):
            return f"{where}.calibrated_sensor.camera_intrinsic must be a 3x3 list of numbers"
        for key in ("width", "height"):
            if not isinstance(rec.get(key), int):
                return f"{where}.{key} must be an integer"
    return ""


def _malformed_field(info: dict) -> str:
    """The first nested field of an info that the dataset, depth GT or evaluation could not
    read (METHOD.md 3.1 layout), as 'key.path must be ...'; '' when the info is readable."""
    for cam in CAMERA_CHANNELS:
        if cam not in info["cam_infos"]:
            return f"cam_infos lacks {cam}"
        problem = _sensor_problem(info["cam_infos"][cam], f"cam_infos.{cam}", camera=True)
        if problem:
            return problem
    problem = _sensor_problem(
        info["lidar_infos"][LIDAR_CHANNEL], f"lidar_infos.{LIDAR_CHANNEL}", False
    )
    if problem:
        return problem
    sweeps = info.get("lidar_sweeps", [])
    if not isinstance(sweeps, list):
        return "lidar_sweeps must be a list"
    for j, sweep in enumerate(sweeps):
        if not isinstance(sweep, dict):
            return f"lidar_sweeps[{j}] must be a mapping"
        if LIDAR_CHANNEL in sweep:
            where = f"lidar_sweeps[{j}].{LIDAR_CHANNEL}"
            problem = _sensor_problem(sweep[LIDAR_CHANNEL], where, camera=False)
            if problem:
                return problem
    anns = info.get("ann_infos", [])
    if not isinstance(anns, list):
        return "ann_infos must be a list"
    for j, ann in enumerate(anns):
        if not isinstance(ann, dict):
            return f"ann_infos[{j}] must be a mapping"
        if not isinstance(ann.get("category_name"), str):
            return f"ann_infos[{j}].category_name must be a string"
        for key, n in (("translation", 3), ("size", 3), ("rotation", 4)):
            if not _is_numbers(ann.get(key), n):
                return f"ann_infos[{j}].{key} must be a list of {n} numbers"
    return ""


def load_infos(path: str | Path) -> list[dict]:
    """The info dicts of an info file (ours or a legacy plain list); see :func:`read_info_file`."""
    return read_info_file(path).infos


# ---------------------------------------------------------------------------------------------
# mmdetection3d >= 1.1 info files
# ---------------------------------------------------------------------------------------------

#: Category of a box whose ``bbox_label_3d`` is -1 (not a detection class): dropped by the GT.
MMDET3D_IGNORED = "mmdet3d.ignored"
#: Image size when the layout gives none (every nuScenes camera).
NUSCENES_IMAGE_SIZE = (900, 1600)  # height, width


def _field(obj: dict, key: str, where: str, path: Path) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(
            f"info file {path} (mmdetection3d layout): {where} lacks '{key}': regenerate it with "
            "mmdetection3d's create_data / update_infos_to_v2 or with `labeldistill prepare`"
        )
    return obj[key]


def _matrix(value: Any, shape: tuple[int, int], where: str, path: Path) -> np.ndarray:
    m = np.asarray(value, dtype=np.float64)
    if m.shape != shape:
        raise DataError(
            f"info file {path} (mmdetection3d layout): {where} has shape {m.shape}, expected "
            f"{shape}"
        )
    return m


def _pose(m: np.ndarray) -> dict[str, list[float]]:
    """4x4 -> {'translation', 'rotation' (w, x, y, z)} (a nuScenes pose record)."""
    return {
        "translation": [float(v) for v in m[:3, 3]],
        "rotation": [float(v) for v in matrix_to_quaternion(m[:3, :3])],
    }


def _us(seconds: Any) -> int:
    """mmdet3d timestamps are seconds (float): -> integer microseconds as nuScenes."""
    return int(round(float(seconds) * 1e6))


def _rel(name: str, folder: str) -> str:
    """A bare file name of the layout -> the nuScenes-relative path ``folder/name``."""
    return name if "/" in name else f"{folder}/{name}"


def _camera_ego_pose(
    sample: dict, img: dict, global_from_ego: np.ndarray, where: str, path: Path
) -> dict[str, list[float]]:
    """A camera's own ego pose: recovered from ``lidar2cam`` when the layout has it.

    mmdetection3d builds ``lidar2cam`` through the camera's ego pose at its own timestamp, so
    global <- camera ego = ego2global . lidar2ego . lidar2cam^-1 . cam2ego^-1 (float32 round-off
    of the stored matrices: ~1e-4 m). Without ``lidar2cam``: the sample's ``ego2global``.
    """
    if "lidar2cam" not in img:
        return _pose(global_from_ego)
    lidar2ego = _matrix(
        _field(sample["lidar_points"], "lidar2ego", "lidar_points", path), (4, 4), "lidar2ego", path
    )
    cam_from_lidar = _matrix(img["lidar2cam"], (4, 4), f"{where}.lidar2cam", path)
    ego_from_cam = _matrix(img["cam2ego"], (4, 4), f"{where}.cam2ego", path)
    m = global_from_ego @ lidar2ego @ np.linalg.inv(cam_from_lidar) @ np.linalg.inv(ego_from_cam)
    u, _, vt = np.linalg.svd(m[:3, :3])  # re-orthonormalise the float32 product
    m[:3, :3] = u @ vt
    return _pose(m)


def infos_from_mmdet3d(data: dict, path: str | Path) -> list[dict]:
    """mmdetection3d >= 1.1 info file (``{'metainfo', 'data_list'}``) -> info dicts of the
    METHOD.md 3.1 layout.

    Read per sample: ``token``, ``timestamp`` (s), ``ego2global``; ``images[CAM_*]`` with
    ``img_path``, ``cam2img``, ``cam2ego`` (``timestamp`` optional); ``lidar_points`` with
    ``lidar_path``, ``lidar2ego``; ``instances`` with ``bbox_3d`` (x, y, z, l, w, h, yaw in the
    LiDAR frame, z the geometric centre), ``bbox_label_3d`` (index into
    ``metainfo['categories']``, -1 = no detection class), ``velocity`` (LiDAR frame) and
    ``num_lidar_pts`` / ``num_radar_pts``; ``lidar_sweeps`` (optional: ``lidar_points.lidar_path``,
    ``timestamp``, ``ego2global``). Missing required fields raise DataError naming the field.

    Documented defaults for what the layout does not hold: a camera's ego pose (the layout has
    one ``ego2global``, the LiDAR's) is recovered from its ``lidar2cam`` (built by mmdetection3d
    through the camera's own ego pose), or is the sample's ``ego2global`` when ``lidar2cam`` is
    absent; images are 1600 x 900; no
    camera sweeps; no LiDAR sweeps unless ``lidar_sweeps`` is given (the dataset then repeats
    the key scan, as the original does for sweep-less samples); ``scene_token`` defaults to one
    scene per sample (so history key frames fall back to the key frame); boxes get a
    representative nuScenes category of their class (:data:`CLASS_CATEGORY`), empty
    instance / attribute tokens; a NaN velocity becomes 0.
    """
    path = Path(path)
    meta = data.get("metainfo") or {}
    categories = _field(meta, "categories", "metainfo", path)
    index_to_class = {int(i): str(name) for name, i in dict(categories).items()}
    unknown = sorted(set(index_to_class.values()) - set(CLASS_CATEGORY))
    if unknown:
        raise DataError(
            f"info file {path} (mmdetection3d layout): metainfo['categories'] names {unknown}, "
            "not nuScenes detection classes"
        )
    data_list = data["data_list"]
    if not isinstance(data_list, list):
        raise DataError(f"info file {path} (mmdetection3d layout): 'data_list' is not a list")
    infos = []
    for i, sample in enumerate(data_list):
        where = f"data_list[{i}]"
        token = str(_field(sample, "token", where, path))
        timestamp = _us(_field(sample, "timestamp", where, path))
        global_from_ego = _matrix(
            _field(sample, "ego2global", where, path), (4, 4), f"{where}.ego2global", path
        )
        ego_pose = _pose(global_from_ego)
        images = _field(sample, "images", where, path)
        cam_infos = {}
        for cam in CAMERA_CHANNELS:
            img = _field(images, cam, f"{where}.images", path)
            cw = f"{where}.images.{cam}"
            k = _matrix(_field(img, "cam2img", cw, path), (3, 3), f"{cw}.cam2img", path)
            calib = _pose(_matrix(_field(img, "cam2ego", cw, path), (4, 4), f"{cw}.cam2ego", path))
            calib["camera_intrinsic"] = k.tolist()
            cam_time = _us(img["timestamp"]) if "timestamp" in img else timestamp
            cam_infos[cam] = {
                "sample_token": token,
                "ego_pose": dict(
                    _camera_ego_pose(sample, img, global_from_ego, cw, path), timestamp=cam_time
                ),
                "timestamp": cam_time,
                "is_key_frame": True,
                "height": int(img.get("height", NUSCENES_IMAGE_SIZE[0])),
                "width": int(img.get("width", NUSCENES_IMAGE_SIZE[1])),
                "filename": _rel(str(_field(img, "img_path", cw, path)), f"samples/{cam}"),
                "calibrated_sensor": calib,
            }
        lidar = _field(sample, "lidar_points", where, path)
        lw = f"{where}.lidar_points"
        global_from_lidar = global_from_ego @ _matrix(
            _field(lidar, "lidar2ego", lw, path), (4, 4), f"{lw}.lidar2ego", path
        )
        lidar_calib = _pose(_matrix(lidar["lidar2ego"], (4, 4), f"{lw}.lidar2ego", path))
        lidar_calib["camera_intrinsic"] = []
        lidar_info = {
            "sample_token": token,
            "ego_pose": dict(ego_pose, timestamp=timestamp),
            "timestamp": timestamp,
            "filename": _rel(
                str(_field(lidar, "lidar_path", lw, path)), f"samples/{LIDAR_CHANNEL}"
            ),
            "calibrated_sensor": lidar_calib,
        }
        sweeps = []
        for j, sweep in enumerate(sample.get("lidar_sweeps") or []):
            sw = f"{where}.lidar_sweeps[{j}]"
            pts = _field(sweep, "lidar_points", sw, path)
            sweep_pose = _matrix(
                _field(sweep, "ego2global", sw, path), (4, 4), f"{sw}.ego2global", path
            )
            sweeps.append(
                {
                    LIDAR_CHANNEL: {
                        "sample_token": token,
                        "ego_pose": _pose(sweep_pose),
                        "timestamp": _us(_field(sweep, "timestamp", sw, path)),
                        "is_key_frame": False,
                        "filename": _rel(
                            str(_field(pts, "lidar_path", f"{sw}.lidar_points", path)),
                            f"sweeps/{LIDAR_CHANNEL}",
                        ),
                        "calibrated_sensor": dict(lidar_calib),
                    }
                }
            )
        anns = [
            _mmdet3d_annotation(inst, global_from_lidar, index_to_class, token, j, where, path)
            for j, inst in enumerate(sample.get("instances") or [])
        ]
        infos.append(
            {
                "sample_token": token,
                "timestamp": timestamp,
                "scene_token": str(sample.get("scene_token", f"mmdet3d-sample-{token}")),
                "cam_infos": cam_infos,
                "lidar_infos": {LIDAR_CHANNEL: lidar_info},
                "cam_sweeps": [],
                "lidar_sweeps": sweeps,
                "ann_infos": anns,
            }
        )
    return infos


def _mmdet3d_annotation(
    inst: dict,
    global_from_lidar: np.ndarray,
    index_to_class: dict[int, str],
    token: str,
    j: int,
    where: str,
    path: Path,
) -> dict:
    """One mmdet3d instance (LiDAR frame) -> a global-frame sample_annotation record."""
    iw = f"{where}.instances[{j}]"
    box = np.asarray(_field(inst, "bbox_3d", iw, path), dtype=np.float64)
    if box.shape[0] < 7:
        raise DataError(
            f"info file {path} (mmdetection3d layout): {iw}.bbox_3d has {box.shape[0]} "
            "values, expected 7"
        )
    label = int(_field(inst, "bbox_label_3d", iw, path))
    if label >= 0 and label not in index_to_class:
        raise DataError(
            f"info file {path} (mmdetection3d layout): {iw}.bbox_label_3d {label} is not in "
            "metainfo['categories']"
        )
    if "num_lidar_pts" in inst:
        n_lidar, n_radar = int(inst["num_lidar_pts"]), int(inst.get("num_radar_pts", 0))
    elif "bbox_3d_isvalid" in inst:
        n_lidar, n_radar = int(bool(inst["bbox_3d_isvalid"])), 0
    else:
        _field(inst, "num_lidar_pts", iw, path)  # raises, naming the field
    rot = global_from_lidar[:3, :3]
    centre = rot @ box[:3] + global_from_lidar[:3, 3]
    yaw_rot = rotz(float(box[6]))
    vel = np.nan_to_num(np.asarray(inst.get("velocity", (0.0, 0.0)), dtype=np.float64))
    vel3 = np.zeros(3)
    vel3[: min(2, vel.shape[0])] = vel[:2]
    category = CLASS_CATEGORY[index_to_class[label]] if label >= 0 else MMDET3D_IGNORED
    return {
        "token": f"{token}-{j}",
        "sample_token": token,
        "instance_token": "",
        "visibility_token": "",
        "attribute_tokens": [],
        "translation": [float(v) for v in centre],
        "size": [float(box[4]), float(box[3]), float(box[5])],  # nuScenes (w, l, h)
        "rotation": [float(v) for v in matrix_to_quaternion(rot @ yaw_rot)],
        "prev": "",
        "next": "",
        "num_lidar_pts": n_lidar,
        "num_radar_pts": n_radar,
        "category_name": category,
        "velocity": rot @ vel3,
    }
