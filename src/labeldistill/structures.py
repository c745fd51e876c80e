"""Glossary of dimensions, frames and box layout; the typed containers passed between layers.

Dimensions (used in every docstring of the package):
    B batch, F key frames (current first, then previous: t, t-1 s, ...), N cameras,
    D depth bins, C channels, H x W image (network input), h x w image features (stride 16),
    Y x X BEV cells (BEV tensors are ``[B, C, Y, X]``, flat index ``y * X + x``),
    M boxes, P points, K box code size.

Frames: ``lidar``, ``ego`` (of the current key sample), ``camera``, ``image``, ``global``.
Matrices are 4x4 and named ``<to>_from_<from>``.

Boxes: ``(x, y, z, l, w, h, yaw, vx, vy)`` in the ego frame; (x, y, z) is the geometric centre,
l is the extent along the heading, w across it; metres, radians (about +z, 0 = +x, CCW), m/s.
nuScenes stores sizes as ``(w, l, h)``: :func:`nusc_size_to_lwh` / :func:`lwh_to_nusc_size` are
the only conversions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

#: Detection classes in index order (METHOD.md section 2).
CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)
NUM_CLASSES = len(CLASSES)

#: Head task groups, as class names (METHOD.md section 2).
TASKS: tuple[tuple[str, ...], ...] = (
    ("car",),
    ("truck", "construction_vehicle"),
    ("bus", "trailer"),
    ("barrier",),
    ("motorcycle", "bicycle"),
    ("pedestrian", "traffic_cone"),
)

#: Camera order of every image tensor (METHOD.md 3.3).
CAMERAS: tuple[str, ...] = (
    "CAM_FRONT_LEFT",
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_LEFT",
    "CAM_BACK",
    "CAM_BACK_RIGHT",
)

#: Box vector layout.
BOX_DIM = 9
BOX_FIELDS: tuple[str, ...] = ("x", "y", "z", "l", "w", "h", "yaw", "vx", "vy")


def nusc_size_to_lwh(size_wlh: Any) -> list[float]:
    """nuScenes ``(w, l, h)`` -> our ``(l, w, h)``."""
    w, l, h = (float(v) for v in size_wlh)
    return [l, w, h]


def lwh_to_nusc_size(lwh: Any) -> list[float]:
    """Our ``(l, w, h)`` -> nuScenes ``(w, l, h)``."""
    l, w, h = (float(v) for v in lwh)
    return [w, l, h]


def _to(value: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, list):
        return [_to(v, device, non_blocking) for v in value]
    if isinstance(value, tuple):
        return tuple(_to(v, device, non_blocking) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and hasattr(value, "to"):
        return value.to(device, non_blocking=non_blocking)
    return value


def _pin(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.pin_memory()
    if isinstance(value, list):
        return [_pin(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_pin(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        pin = getattr(value, "pin_memory", None)
        return pin() if callable(pin) else value
    return value


class _Movable:
    """Mixin: ``.to(device, non_blocking)`` moves every tensor field (recursively through lists)
    and ``.pin_memory()`` pins them (what ``DataLoader(pin_memory=True)`` calls on a batch
    object; without it the option is a no-op for a dataclass)."""

    def to(self, device: torch.device | str, non_blocking: bool = False):
        changes = {
            f.name: _to(getattr(self, f.name), device, non_blocking)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def pin_memory(self):
        changes = {f.name: _pin(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class SampleMeta:
    """Per-sample bookkeeping needed to write results in the global frame.

    ``global_from_ego`` is given as the mean key-frame camera ego pose (METHOD.md 2, quirk 17):
    translation [3] and quaternion (w, x, y, z) [4].
    """

    token: str
    ego_translation: tuple[float, float, float]
    ego_rotation: tuple[float, float, float, float]
    scene_token: str = ""
    timestamp: int = 0


@dataclass
class Sample(_Movable):
    """One dataset item (no batch dimension).

    imgs:            [F, N, 3, H, W] float, normalised network input; or uint8 in the network's
                     channel order (``uint8_images``), normalised by the student on its device.
    ego_from_camera: [F, N, 4, 4] frame-f camera -> current key ego frame (of that camera's
                     timestamp), METHOD.md 3.3 ``sensor2ego_mats``.
    intrinsics:      [F, N, 4, 4] K in the top-left 3x3.
    ida:             [F, N, 4, 4] original pixel -> augmented pixel.
    key_from_frame:  [F, N, 4, 4] ``sensor2sensor_mats`` (unused by the model).
    bda:             [4, 4] BEV augmentation (identity at test time).
    timestamps:      [F, N] int64 microseconds.
    gt_boxes:        [M, 9] ego frame, after BEV augmentation.
    gt_labels:       [M] int64 class indices into CLASSES.
    depth:           [N, H, W] LiDAR depth in metres (0 = no point), key frame only, or None.
    lidar_points:    [P, 5] (x, y, z, intensity, time lag s) in the key LiDAR ego frame after
                     BEV augmentation, or None.
    """

    imgs: Tensor
    ego_from_camera: Tensor
    intrinsics: Tensor
    ida: Tensor
    key_from_frame: Tensor
    bda: Tensor
    timestamps: Tensor
    gt_boxes: Tensor
    gt_labels: Tensor
    meta: SampleMeta
    depth: Tensor | None = None
    lidar_points: Tensor | None = None


@dataclass
class CameraParams(_Movable):
    """The matrices the view transform needs for one frame of a batch.

    ego_from_camera, intrinsics, ida: [B, N, 4, 4]; bda: [B, 4, 4].
    """

    ego_from_camera: Tensor
    intrinsics: Tensor
    ida: Tensor
    bda: Tensor


@dataclass
class Batch(_Movable):
    """A collated batch. Tensor shapes as :class:`Sample` with a leading B.

    imgs [B, F, N, 3, H, W]; ego_from_camera / intrinsics / ida / key_from_frame
    [B, F, N, 4, 4]; bda [B, 4, 4]; timestamps [B, F, N]; gt_boxes / gt_labels: per-sample
    lists ([M_b, 9] / [M_b]); depth [B, N, H, W] or None; lidar_points [B, P, 5] or None
    (padded with rows of -999 to a fixed P, which voxelisation drops as out of range).
    """

    imgs: Tensor
    ego_from_camera: Tensor
    intrinsics: Tensor
    ida: Tensor
    key_from_frame: Tensor
    bda: Tensor
    timestamps: Tensor
    gt_boxes: list[Tensor]
    gt_labels: list[Tensor]
    metas: list[SampleMeta]
    depth: Tensor | None = None
    lidar_points: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.imgs.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.imgs.shape[1])

    def camera_params(self, frame: int) -> CameraParams:
        """Matrices of key frame ``frame`` (0 = current)."""
        return CameraParams(
            ego_from_camera=self.ego_from_camera[:, frame],
            intrinsics=self.intrinsics[:, frame],
            ida=self.ida[:, frame],
            bda=self.bda,
        )


@dataclass
class TaskOutput(_Movable):
    """Raw outputs of one CenterPoint task head, each [B, k, Y, X].

    reg (2: sub-cell offset x, y), height (1: centre z), dim (3: log l, w, h),
    rot (2: sin, cos), vel (2: vx, vy), heatmap (n_cls of the task: logits).
    """

    reg: Tensor
    height: Tensor
    dim: Tensor
    rot: Tensor
    vel: Tensor
    heatmap: Tensor

    def box_code(self) -> Tensor:
        """The 10-channel regression code [B, 10, Y, X]: reg, height, dim, rot, vel."""
        return torch.cat([self.reg, self.height, self.dim, self.rot, self.vel], dim=1)


@dataclass
class HeadOutput(_Movable):
    """Outputs of a CenterPoint head: one :class:`TaskOutput` per task group."""

    tasks: list[TaskOutput]


@dataclass
class Targets(_Movable):
    """CenterPoint training targets, one entry per task.

    heatmaps[t]:   [B, k_t, Y, X] Gaussian heatmaps in [0, 1].
    anno_boxes[t]: [B, max_objs, 10] (dx, dy, z, ln l, ln w, ln h, sin, cos, vx, vy).
    inds[t]:       [B, max_objs] int64 flat cell index y * X + x.
    masks[t]:      [B, max_objs] bool, True where a box is present.
    """

    heatmaps: list[Tensor]
    anno_boxes: list[Tensor]
    inds: list[Tensor]
    masks: list[Tensor]


@dataclass
class Detections(_Movable):
    """Decoded detections of one sample: boxes [M, 9] ego frame, scores [M], labels [M]."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor

    @staticmethod
    def empty() -> Detections:
        return Detections(torch.zeros(0, BOX_DIM), torch.zeros(0), torch.zeros(0, dtype=torch.long))


@dataclass
class StudentOutput(_Movable):
    """Forward output of the camera student.

    head:          CenterPoint head outputs on the Y x X grid.
    depth:         [B * N, D, h, w] key-frame depth probabilities (softmax), for the depth loss.
    distill_feats: the two trunk levels used for distillation: BEV input [B, F*C, Y, X] and
                   trunk layer-1 output [B, C1, Y/2, X/2].
    """

    head: HeadOutput
    depth: Tensor
    distill_feats: tuple[Tensor, Tensor]


@dataclass
class TeacherOutput(_Movable):
    """Forward output of a teacher (LiDAR CenterPoint or label encoder decoded by its head).

    feats: the two backbone levels [B, 128, Y, X] and [B, 256, Y/2, X/2] (SECOND space).
    head:  CenterPoint head outputs (after neck + head).
    """

    feats: tuple[Tensor, Tensor]
    head: HeadOutput


@dataclass
class LabelMaps(_Movable):
    """Rasterised GT for the label encoder (METHOD.md 6.1).

    box:   [B, Y, X, 9] raw box vector per cell; label: [B, Y, X, 10] one-hot class;
    mask:  [B, Y, X] uint8 (1 where a box was drawn).
    """

    box: Tensor
    label: Tensor
    mask: Tensor


@dataclass
class LossDict:
    """Named scalar losses (already weighted) and their sum."""

    terms: dict[str, Tensor] = field(default_factory=dict)

    @property
    def total(self) -> Tensor:
        return torch.stack(list(self.terms.values())).sum()


@dataclass
class DistillOutput(_Movable):
    """Training forward of the LabelDistill student (METHOD.md 7-8).

    student:       the camera student's output.
    lidar:         LiDAR teacher output (backbone features + head) or None.
    label_feats:   label-encoder features ([B, 128, Y, X], [B, 256, Y/2, X/2]) or None.
    lidar_adapted: LiDAR adaptor output (same shapes as the teacher features) or None.
    label_adapted: label adaptor output or None.
    """

    student: StudentOutput
    lidar: TeacherOutput | None = None
    label_feats: tuple[Tensor, Tensor] | None = None
    lidar_adapted: tuple[Tensor, Tensor] | None = None
    label_adapted: tuple[Tensor, Tensor] | None = None
