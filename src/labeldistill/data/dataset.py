"""The nuScenes camera (+ LiDAR) dataset: info dicts -> typed :class:`Sample`; collate -> Batch.

Follows METHOD.md 3.3 (camera dataset) and 3.4 (LiDAR variant):

* key frames at ``[0] + cfg.key_idxes`` offsets into the (scene- and time-ordered) info list;
  an offset that leaves the list or the scene falls back to the current sample
  (``"current"``, camera dataset) or to the last valid index so far (``"last_valid"``, LiDAR
  dataset) - ``cfg.train_history_fallback`` / ``cfg.eval_history_fallback`` (quirk 19);
* six cameras in :data:`~labeldistill.structures.CAMERAS` order; one ida per camera per item,
  shared by all frames;
* images normalised with the RGB statistics, channel order BGR if ``cfg.bgr_quirk`` (quirk 16);
* GT boxes in the mean-of-6-camera key ego frame (quirk 17), class mapping of METHOD.md 3.3,
  only annotations with LiDAR or radar points;
* bda on boxes (and LiDAR points), identity at test time;
* depth maps from the precomputed depth GT files (training only, key frame only);
* LiDAR points of the key sample (key + sweeps) when ``cfg.return_lidar``.

Deliberate difference from the original: at evaluation time GT boxes are still returned
(converted to the ego frame, not augmented) instead of an empty tensor, so that evaluation,
visualisation and the label-encoder stage can use them; models never read them at test time.

Randomness: each item draws from its own ``numpy.random.Generator`` seeded with
``SeedSequence([seed, epoch, index])``. An item is therefore the same whichever DataLoader
worker loads it (results do not depend on ``num_workers``), differs between items and between
epochs, and is reproducible for a given seed. Call :meth:`NuScenesDataset.set_epoch` before each
epoch (the training loop does); with ``persistent_workers=True`` the workers keep the epoch they
were started with, so use non-persistent workers if per-epoch augmentation matters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from labeldistill.config import DataConfig
from labeldistill.data import augment
from labeldistill.data.depth_gt import depth_gt_path, read_depth_gt
from labeldistill.data.infos import info_path, load_infos
from labeldistill.data.lidar import lidar_points
from labeldistill.data.readers import load_image
from labeldistill.geometry import (
    devkit_yaw,
    invert,
    pose_matrix,
    quaternion_multiply,
    quaternion_to_matrix,
)
from labeldistill.nuscenes_schema import CATEGORY_TO_CLASS
from labeldistill.structures import BOX_DIM, CAMERAS, CLASSES, Batch, Sample, SampleMeta

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Pure helpers (also used by tests and other stages)
# --------------------------------------------------------------------------------------------


def select_frames(
    infos: list[dict[str, Any]], idx: int, key_idxes: tuple[int, ...], fallback: str
) -> list[int]:
    """Info indices of the F key frames of item ``idx``: ``[idx] + [idx + k for k in key_idxes]``.

    An index outside the list or in another scene is replaced by ``idx`` (``"current"``) or by
    the last valid index of this loop so far, starting with ``idx`` (``"last_valid"``).
    """
    if fallback not in ("current", "last_valid"):
        raise ValueError(f"unknown history fallback {fallback!r}")
    scene = infos[idx]["scene_token"]
    frames = [idx]
    last = idx
    for k in key_idxes:
        j = idx + k
        if 0 <= j < len(infos) and infos[j]["scene_token"] == scene:
            last = j
            frames.append(j)
        else:
            frames.append(idx if fallback == "current" else last)
    return frames


@dataclass(frozen=True)
class EgoPose:
    """Mean key-frame camera ego pose: translation [3], quaternion (w, x, y, z) [4].

    Both are component-wise means over the six cameras (the quaternion is not renormalised,
    as the original; every consumer normalises it when building a rotation).
    """

    translation: np.ndarray
    rotation: np.ndarray

    def global_from_ego(self) -> np.ndarray:
        """4x4 float64 (rotation normalised)."""
        m = np.eye(4)
        m[:3, :3] = quaternion_to_matrix(self.rotation)
        m[:3, 3] = self.translation
        return m


def mean_camera_ego_pose(info: dict[str, Any]) -> EgoPose:
    """Component-wise mean of the six key-frame camera ego poses (METHOD.md 2, quirk 17)."""
    poses = [info["cam_infos"][cam]["ego_pose"] for cam in CAMERAS]
    t = np.mean([np.asarray(p["translation"], dtype=np.float64) for p in poses], axis=0)
    q = np.mean([np.asarray(p["rotation"], dtype=np.float64) for p in poses], axis=0)
    return EgoPose(translation=t, rotation=q)


@dataclass(frozen=True)
class GroundTruth:
    """GT of one sample: boxes [M, 9] (x, y, z, l, w, h, yaw, vx, vy) float64, labels [M]."""

    boxes: np.ndarray
    labels: np.ndarray


def convert_gt(info: dict[str, Any], pose: EgoPose) -> GroundTruth:
    """Annotations (global frame) -> boxes in the frame of ``pose`` (METHOD.md 3.3).

    Keeps annotations whose category maps to one of the 10 classes and that have at least one
    LiDAR or radar point; no range or visibility filter. Centre = R^T (c - t); yaw = devkit yaw
    of q^-1 q_box; sizes (w, l, h) -> (l, w, h); velocity = (R^T v)[:2] (NaN -> 0).
    """
    rot = quaternion_to_matrix(pose.rotation)
    q_unit = pose.rotation / np.linalg.norm(pose.rotation)
    q_inv = q_unit * np.array([1.0, -1.0, -1.0, -1.0])
    boxes: list[list[float]] = []
    labels: list[int] = []
    for ann in info.get("ann_infos", []):
        name = CATEGORY_TO_CLASS.get(ann["category_name"])
        if name is None:
            continue
        if int(ann.get("num_lidar_pts", 0)) + int(ann.get("num_radar_pts", 0)) <= 0:
            continue
        centre = rot.T @ (np.asarray(ann["translation"], dtype=np.float64) - pose.translation)
        yaw = devkit_yaw(quaternion_multiply(q_inv, np.asarray(ann["rotation"], dtype=np.float64)))
        vel = np.nan_to_num(np.asarray(ann.get("velocity", (0.0, 0.0, 0.0)), dtype=np.float64))
        vel3 = np.zeros(3)
        vel3[: min(3, vel.shape[0])] = vel[:3]
        vel_ego = rot.T @ vel3
        w, length, h = (float(v) for v in ann["size"])
        boxes.append([*centre.tolist(), length, w, h, yaw, float(vel_ego[0]), float(vel_ego[1])])
        labels.append(CLASSES.index(name))
    return GroundTruth(
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, BOX_DIM),
        labels=np.asarray(labels, dtype=np.int64),
    )


def image_uint8(img, cfg: DataConfig, out: Tensor | None = None) -> Tensor:
    """PIL RGB image -> uint8 tensor [3, H, W], channel order BGR when ``cfg.bgr_quirk``
    (METHOD.md 3.3, quirk 16), else RGB; not normalised (see :func:`normalize_image`).

    Written into ``out`` ([3, H, W] uint8) when given.
    """
    hwc = torch.from_numpy(np.array(img, dtype=np.uint8))
    chw = hwc.permute(2, 0, 1)
    if cfg.bgr_quirk:
        chw = chw.flip(0)
    if out is None:
        return chw.contiguous()
    return out.copy_(chw)


def normalize_image(img, cfg: DataConfig, out: Tensor | None = None) -> Tensor:
    """PIL RGB image -> float32 tensor [3, H, W]: (x - mean) / std with the RGB statistics,
    channel order BGR when ``cfg.bgr_quirk`` (METHOD.md 3.3, quirk 16), else RGB.

    Written into ``out`` ([3, H, W] float32) when given. The readable CPU reference of
    :func:`labeldistill.ops.image_norm.normalize_images` (uint8 images normalised on the
    device, bit-identical).
    """
    chw = image_uint8(img, cfg)
    if out is None:
        out = torch.empty(chw.shape, dtype=torch.float32)
    out.copy_(chw)
    mean = torch.tensor(cfg.img_mean, dtype=torch.float32).view(3, 1, 1)
    inv_std = 1.0 / torch.tensor(cfg.img_std, dtype=torch.float32).view(3, 1, 1)
    return out.sub_(mean).mul_(inv_std)


def depth_map(uvd: np.ndarray, params: augment.IdaParams) -> np.ndarray:
    """Depth points [P, 3] (u, v, depth) in original pixels -> depth map [H, W] float32.

    Pixels are moved with the ida, truncated toward zero (int16, as the original), kept when
    0 <= u < W and 0 <= v < H; a later point overwrites an earlier one at the same pixel;
    0 means no measurement.
    """
    out_w, out_h = params.out_size
    out = np.zeros((out_h, out_w), dtype=np.float32)
    if uvd.shape[0] == 0:
        return out
    uv = augment.apply_ida_points(uvd[:, :2], params).astype(np.int16).astype(np.int64)
    keep = (uv[:, 0] >= 0) & (uv[:, 0] < out_w) & (uv[:, 1] >= 0) & (uv[:, 1] < out_h)
    flat = uv[keep, 1] * out_w + uv[keep, 0]
    depth = uvd[keep, 2].astype(np.float32)
    # Last occurrence wins: unique over the reversed order gives each pixel's last point.
    uniq, first_in_rev = np.unique(flat[::-1], return_index=True)
    out.reshape(-1)[uniq] = depth[::-1][first_in_rev]
    return out


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


@dataclass
class _FrameGeometry:
    """Camera geometry of one item (float64): matrices [F, N, 4, 4], timestamps [F, N] int64."""

    ego_from_camera: np.ndarray
    key_from_frame: np.ndarray
    intrinsics: np.ndarray
    ida: np.ndarray
    timestamps: np.ndarray


class NuScenesDataset(Dataset):
    """nuScenes key samples as :class:`Sample` (METHOD.md 3.3 / 3.4).

    Args:
        cfg: the data config (image size, key frames, augmentation, outputs).
        infos: info dicts in the METHOD.md 3.1 layout, ordered by scene and time.
        dataroot: directory the info ``filename`` entries are relative to.
        train: training split (random ida/bda when ``cfg.augment``; depth maps when
            ``cfg.return_depth``; ``cfg.train_history_fallback``) or evaluation (fixed
            resize/crop, identity bda, no depth, ``cfg.eval_history_fallback``). GT boxes are
            returned in both cases.
        seed: base seed of the per-item generators.
        uint8_images: ship ``imgs`` as uint8 (channel order applied, not normalised; the
            model normalises them on its device, bit-identically), a quarter of the bytes of
            the float32 default.
    """

    def __init__(
        self,
        cfg: DataConfig,
        infos: list[dict[str, Any]],
        dataroot: str | Path,
        *,
        train: bool,
        seed: int = 0,
        uint8_images: bool = False,
    ) -> None:
        self.cfg = cfg
        self.uint8_images = bool(uint8_images)
        self.infos = infos
        self.dataroot = Path(dataroot)
        self.train = train
        self.seed = int(seed)
        self.epoch = 0
        self.augment = bool(train and cfg.augment)
        self.fallback = cfg.train_history_fallback if train else cfg.eval_history_fallback
        self.return_depth = bool(train and cfg.return_depth)

    def __len__(self) -> int:
        return len(self.infos)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch mixed into the per-item seeds (call before each epoch)."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The generator of item ``index`` at the current epoch."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, int(index)]))

    def __getitem__(self, index: int) -> Sample:
        """Item ``index``: the steps below, drawing from the item's generator in this order
        (ida per camera, bda, then the LiDAR sweeps' subsampling)."""
        cfg = self.cfg
        if not 0 <= index < len(self.infos):
            raise IndexError(index)
        info = self.infos[index]
        rng = self.rng(index)
        frames = select_frames(self.infos, index, tuple(cfg.key_idxes), self.fallback)
        ida_params = self._sample_ida(rng, info)
        bda_params = augment.sample_bda(rng, cfg, self.augment)
        bda = augment.bda_matrix(bda_params)
        imgs = self._images(frames, ida_params)
        geo = self._frame_geometry(info, frames, ida_params)
        pose = mean_camera_ego_pose(info)
        gt = convert_gt(info, pose)
        boxes = augment.apply_bda_boxes(gt.boxes, bda_params) if self.augment else gt.boxes
        return Sample(
            imgs=imgs,
            ego_from_camera=torch.from_numpy(geo.ego_from_camera).float(),
            intrinsics=torch.from_numpy(geo.intrinsics).float(),
            ida=torch.from_numpy(geo.ida).float(),
            key_from_frame=torch.from_numpy(geo.key_from_frame).float(),
            bda=torch.from_numpy(bda).float(),
            timestamps=torch.from_numpy(geo.timestamps),
            gt_boxes=torch.from_numpy(boxes).float(),
            gt_labels=torch.from_numpy(gt.labels),
            meta=self._meta(info, pose),
            depth=self._depth_maps(info, ida_params) if self.return_depth else None,
            lidar_points=self._lidar(info, bda, rng) if cfg.return_lidar else None,
        )

    def _sample_ida(
        self, rng: np.random.Generator, info: dict[str, Any]
    ) -> list[augment.IdaParams]:
        """One image-view augmentation per camera (:data:`CAMERAS` order), shared by all frames."""
        key_cams = info["cam_infos"]
        return [
            augment.sample_ida(
                rng, self.cfg, int(key_cams[c]["width"]), int(key_cams[c]["height"]), self.augment
            )
            for c in CAMERAS
        ]

    def _images(self, frames: list[int], ida_params: list[augment.IdaParams]) -> Tensor:
        """Augmented images [F, N, 3, H, W] (uint8 or normalised float32; [F, N, 3, 0, 0] when
        ``cfg.return_images`` is off). A frame that fell back to an already loaded image reuses
        it (same ida)."""
        cfg = self.cfg
        f_n = (len(frames), len(CAMERAS))
        h, w = cfg.image_size
        img_dtype = torch.uint8 if self.uint8_images else torch.float32
        if not cfg.return_images:
            return torch.empty((*f_n, 3, 0, 0), dtype=img_dtype)
        imgs = torch.empty((*f_n, 3, h, w), dtype=img_dtype)
        to_tensor = image_uint8 if self.uint8_images else normalize_image
        image_cache: dict[tuple[str, int], Tensor] = {}
        for fi, frame_idx in enumerate(frames):
            frame_cams = self.infos[frame_idx]["cam_infos"]
            for ci, cam in enumerate(CAMERAS):
                filename = frame_cams[cam]["filename"]
                cache_key = (filename, ci)
                if cache_key in image_cache:
                    imgs[fi, ci].copy_(image_cache[cache_key])
                    continue
                pil = load_image(self.dataroot / filename)
                pil = augment.apply_ida_image(pil, ida_params[ci])
                image_cache[cache_key] = to_tensor(pil, cfg, out=imgs[fi, ci])
        return imgs

    def _frame_geometry(
        self, info: dict[str, Any], frames: list[int], ida_params: list[augment.IdaParams]
    ) -> _FrameGeometry:
        """Per frame and camera: ego_from_camera, key_from_frame, intrinsics, ida, timestamps."""
        key_cams = info["cam_infos"]
        f_n = (len(frames), len(CAMERAS))
        geo = _FrameGeometry(
            ego_from_camera=np.zeros((*f_n, 4, 4)),
            key_from_frame=np.zeros((*f_n, 4, 4)),
            intrinsics=np.zeros((*f_n, 4, 4)),
            ida=np.zeros((*f_n, 4, 4)),
            timestamps=np.zeros(f_n, dtype=np.int64),
        )
        for fi, frame_idx in enumerate(frames):
            frame_cams = self.infos[frame_idx]["cam_infos"]
            for ci, cam in enumerate(CAMERAS):
                key_cam, cam_info = key_cams[cam], frame_cams[cam]
                # frame-f camera -> frame-f ego -> global -> key ego (of this camera's timestamp)
                key_ego_from_global = invert(pose_matrix(key_cam["ego_pose"]))
                e_from_c = (
                    key_ego_from_global
                    @ pose_matrix(cam_info["ego_pose"])
                    @ pose_matrix(cam_info["calibrated_sensor"])
                )
                key_cam_from_ego = invert(pose_matrix(key_cam["calibrated_sensor"]))
                geo.ego_from_camera[fi, ci] = e_from_c
                # sensor2sensor: inverse of (key camera <- frame-f camera)
                geo.key_from_frame[fi, ci] = invert(key_cam_from_ego @ e_from_c)
                k = np.eye(4)
                k[:3, :3] = np.asarray(cam_info["calibrated_sensor"]["camera_intrinsic"])
                geo.intrinsics[fi, ci] = k
                geo.ida[fi, ci] = augment.ida_matrix(ida_params[ci])
                geo.timestamps[fi, ci] = int(cam_info["timestamp"])
        return geo

    def _depth_maps(self, info: dict[str, Any], ida_params: list[augment.IdaParams]) -> Tensor:
        """Depth GT of the key frame [N, H, W] float32 (0 = no measurement)."""
        key_cams = info["cam_infos"]
        return torch.from_numpy(
            np.stack([self._depth(key_cams[c], p) for c, p in zip(CAMERAS, ida_params)])
        )

    def _lidar(self, info: dict[str, Any], bda: np.ndarray, rng: np.random.Generator) -> Tensor:
        """LiDAR points of the key sample (key + sweeps, bda applied) [P, 5]."""
        cfg = self.cfg
        return torch.from_numpy(
            lidar_points(
                info,
                self.dataroot,
                num_sweeps=cfg.lidar_sweeps,
                max_points=cfg.max_points,
                range_cut=cfg.lidar_range_cut,
                bda=bda,
                rng=rng,
            )
        )

    @staticmethod
    def _meta(info: dict[str, Any], pose: EgoPose) -> SampleMeta:
        return SampleMeta(
            token=str(info["sample_token"]),
            ego_translation=tuple(float(v) for v in pose.translation),  # type: ignore[arg-type]
            ego_rotation=tuple(float(v) for v in pose.rotation),  # type: ignore[arg-type]
            scene_token=str(info.get("scene_token", "")),
            timestamp=int(info.get("timestamp", 0)),
        )

    def _depth(self, cam_info: dict[str, Any], params: augment.IdaParams) -> np.ndarray:
        uvd = read_depth_gt(
            depth_gt_path(self.dataroot, cam_info["filename"], self.cfg.depth_gt_dir)
        )
        return depth_map(uvd, params)


def collate(samples: list[Sample]) -> Batch:
    """Stack samples into a :class:`Batch` (GT and metas stay per-sample lists).

    imgs [B, F, N, 3, H, W]; matrices [B, F, N, 4, 4]; bda [B, 4, 4]; timestamps [B, F, N];
    depth [B, N, H, W] and lidar_points [B, P, 5] when every sample has them, else None.
    """
    if not samples:
        raise ValueError("collate needs at least one sample")

    def stack_optional(values: list[Tensor | None]) -> Tensor | None:
        if any(v is None for v in values):
            return None
        return torch.stack(values)  # type: ignore[arg-type]

    return Batch(
        imgs=torch.stack([s.imgs for s in samples]),
        ego_from_camera=torch.stack([s.ego_from_camera for s in samples]),
        intrinsics=torch.stack([s.intrinsics for s in samples]),
        ida=torch.stack([s.ida for s in samples]),
        key_from_frame=torch.stack([s.key_from_frame for s in samples]),
        bda=torch.stack([s.bda for s in samples]),
        timestamps=torch.stack([s.timestamps for s in samples]),
        gt_boxes=[s.gt_boxes for s in samples],
        gt_labels=[s.gt_labels for s in samples],
        metas=[s.meta for s in samples],
        depth=stack_optional([s.depth for s in samples]),
        lidar_points=stack_optional([s.lidar_points for s in samples]),
    )


def build_dataset(
    cfg: DataConfig, split: str, train: bool, seed: int = 0, uint8_images: bool = False
) -> NuScenesDataset:
    """The dataset of ``split`` from ``info_path(cfg.info_dir or cfg.dataroot, split)``."""
    infos = load_infos(info_path(Path(cfg.info_dir or cfg.dataroot), split))
    logger.info("split %s: %d samples (%s)", split, len(infos), "train" if train else "eval")
    return NuScenesDataset(
        cfg, infos, cfg.dataroot, train=train, seed=seed, uint8_images=uint8_images
    )
