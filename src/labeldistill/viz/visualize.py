"""One PNG per sample: the six cameras with projected 3D boxes and a bird's-eye view.

Layout of a picture (see :func:`panel_layout`): a header line, then the six camera images in
the nuScenes arrangement (FRONT_LEFT FRONT FRONT_RIGHT / BACK_LEFT BACK BACK_RIGHT), each
scaled to a tile of ``TILE_WIDTH`` pixels, and to their right a square BEV panel in the ego
frame of the sample (mean key camera ego pose, METHOD.md 2): x forward = up, y left = left,
LiDAR key points in grey when the file exists, boxes as footprints with a heading line.

Ground truth is drawn in :data:`GT_COLOR`, predictions in their class colour
(:data:`CLASS_COLORS`). Every box is projected from the global frame into each camera with
that camera's own ego pose and calibration, so it sits on the object in the image.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from labeldistill.data.infos import info_path, load_infos
from labeldistill.data.readers import load_image, load_points
from labeldistill.errors import DataError, UserError
from labeldistill.evaluation.results import load_results, sample_meta_from_info
from labeldistill.geometry import apply, box_corners, invert, pose_matrix, transform
from labeldistill.io import atomic_write_bytes
from labeldistill.nuscenes_schema import CATEGORY_TO_CLASS
from labeldistill.structures import CAMERAS, CLASSES, nusc_size_to_lwh

logger = logging.getLogger(__name__)

#: Colour of ground-truth boxes (RGB).
GT_COLOR: tuple[int, int, int] = (0, 255, 0)
#: Colour of predicted boxes per class (RGB), in CLASSES order.
CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "car": (255, 158, 0),
    "truck": (255, 99, 71),
    "construction_vehicle": (233, 150, 70),
    "bus": (255, 69, 0),
    "trailer": (255, 140, 0),
    "barrier": (112, 128, 144),
    "motorcycle": (255, 61, 99),
    "bicycle": (220, 20, 60),
    "pedestrian": (0, 0, 230),
    "traffic_cone": (47, 79, 79),
}
POINT_COLOR: tuple[int, int, int] = (110, 110, 110)
TILE_WIDTH = 480
HEADER_HEIGHT = 24
BEV_RANGE = 60.0  # metres shown on each side of the ego in the BEV panel
LINE_WIDTH = 2
NEAR_PLANE = 0.1  # metres in front of the camera

#: Bottom-corner indices of :func:`labeldistill.geometry.box_corners` (0 and 3 are the front).
_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 0),
    (4, 5), (5, 6), (6, 7), (7, 4),
    (0, 4), (1, 5), (2, 6), (3, 7),
    (0, 7), (3, 4),  # a cross on the front face
)  # fmt: skip


@dataclass(frozen=True)
class PanelLayout:
    """Pixel geometry of a picture: camera tiles of ``tile_w x tile_h`` below a header, the
    BEV panel (``bev_size`` square) to their right; ``scale`` = tile pixels per image pixel."""

    image_w: int
    image_h: int
    tile_w: int
    tile_h: int
    bev_size: int

    @property
    def scale(self) -> float:
        return self.tile_w / self.image_w

    @property
    def width(self) -> int:
        return 3 * self.tile_w + self.bev_size

    @property
    def height(self) -> int:
        return HEADER_HEIGHT + 2 * self.tile_h

    def camera_origin(self, cam: str) -> tuple[int, int]:
        """Top-left pixel (x, y) of a camera's tile."""
        i = CAMERAS.index(cam)
        return (i % 3) * self.tile_w, HEADER_HEIGHT + (i // 3) * self.tile_h

    def to_panel(self, cam: str, uv: np.ndarray) -> np.ndarray:
        """Image pixels [P, 2] of a camera -> picture pixels [P, 2]."""
        ox, oy = self.camera_origin(cam)
        return uv * self.scale + np.array([ox, oy], dtype=np.float64)

    def bev_pixels(self, xy: np.ndarray) -> np.ndarray:
        """Ego-frame (x, y) [P, 2] metres -> picture pixels [P, 2] in the BEV panel."""
        s = self.bev_size / (2 * BEV_RANGE)
        cx = 3 * self.tile_w + self.bev_size / 2
        cy = HEADER_HEIGHT + self.bev_size / 2
        return np.stack([cx - xy[:, 1] * s, cy - xy[:, 0] * s], axis=1)


def panel_layout(image_w: int, image_h: int, tile_w: int = TILE_WIDTH) -> PanelLayout:
    """The layout for camera images of ``image_w x image_h`` pixels."""
    tile_h = round(tile_w * image_h / image_w)
    return PanelLayout(image_w, image_h, tile_w, tile_h, bev_size=2 * tile_h)


@dataclass(frozen=True)
class GlobalBox:
    """A box in the global frame: corners [8, 3] (order of ``geometry.box_corners``) and name."""

    corners: np.ndarray
    name: str
    is_gt: bool

    @property
    def color(self) -> tuple[int, int, int]:
        return GT_COLOR if self.is_gt else CLASS_COLORS[self.name]


def global_box_corners(
    translation: Sequence[float], size_wlh: Sequence[float], rotation: Sequence[float]
) -> np.ndarray:
    """Corners [8, 3] of a nuScenes box (centre, size (w, l, h), quaternion w, x, y, z)."""
    length, width, height = nusc_size_to_lwh(size_wlh)
    local = box_corners([0.0, 0.0, 0.0, length, width, height, 0.0])
    return apply(transform(rotation, translation), local)


def _gt_boxes(info: Mapping[str, Any]) -> list[GlobalBox]:
    out = []
    for ann in info.get("ann_infos", []):
        name = CATEGORY_TO_CLASS.get(ann["category_name"])
        if name is None:
            continue
        corners = global_box_corners(ann["translation"], ann["size"], ann["rotation"])
        out.append(GlobalBox(corners, name, is_gt=True))
    return out


def _pred_boxes(records: Sequence[Mapping[str, Any]], threshold: float) -> list[GlobalBox]:
    out = []
    for rec in records:
        if float(rec["detection_score"]) < threshold:
            continue
        corners = global_box_corners(rec["translation"], rec["size"], rec["rotation"])
        out.append(GlobalBox(corners, rec["detection_name"], is_gt=False))
    return out


def _clip_segment(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Clip a camera-frame segment to z >= NEAR_PLANE (None when it is wholly behind)."""
    if p[2] < NEAR_PLANE and q[2] < NEAR_PLANE:
        return None
    if p[2] < NEAR_PLANE:
        p = q + (p - q) * (q[2] - NEAR_PLANE) / (q[2] - p[2])
    elif q[2] < NEAR_PLANE:
        q = p + (q - p) * (p[2] - NEAR_PLANE) / (p[2] - q[2])
    return p, q


def project_box_edges(
    corners_global: np.ndarray, cam_info: Mapping[str, Any]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Box edges projected into a camera image -> list of (uv_start [2], uv_end [2]) pixels.

    corners_global: [8, 3]. The camera's own ego pose and calibration are used; edges are
    clipped at the near plane; edges behind the camera are dropped.
    """
    cam_from_global = invert(pose_matrix(cam_info["calibrated_sensor"])) @ invert(
        pose_matrix(cam_info["ego_pose"])
    )
    pts = apply(cam_from_global, corners_global)
    k = np.asarray(cam_info["calibrated_sensor"]["camera_intrinsic"], dtype=np.float64)[:3, :3]
    edges = []
    for a, b in _EDGES:
        seg = _clip_segment(pts[a], pts[b])
        if seg is None:
            continue
        uv = np.stack(seg) @ k.T
        uv = uv[:, :2] / uv[:, 2:3]
        edges.append((uv[0], uv[1]))
    return edges


def _in_view(edges: list[tuple[np.ndarray, np.ndarray]], w: int, h: int) -> bool:
    pts = np.array([p for e in edges for p in e]) if edges else np.zeros((0, 2))
    return bool(((pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)).any())


def _lidar_points_ego(info: Mapping[str, Any], dataroot: Path, ego_from_global: np.ndarray):
    """Key LiDAR points in the sample's ego frame [P, 3], or None when the file is absent."""
    lidar = info["lidar_infos"]["LIDAR_TOP"]
    path = dataroot / lidar["filename"]
    if not path.is_file():
        return None
    pts = load_points(path)[:, :3].astype(np.float64)
    m = ego_from_global @ pose_matrix(lidar["ego_pose"]) @ pose_matrix(lidar["calibrated_sensor"])
    return apply(m, pts)


def render_sample(
    info: Mapping[str, Any],
    dataroot: str | Path,
    predictions: Sequence[Mapping[str, Any]] = (),
    score_threshold: float = 0.3,
    tile_w: int = TILE_WIDTH,
):
    """Draw one sample -> PIL RGB image (layout of :func:`panel_layout`)."""
    dataroot = Path(dataroot)
    first = info["cam_infos"][CAMERAS[0]]
    layout = panel_layout(int(first["width"]), int(first["height"]), tile_w)
    canvas = Image.new("RGB", (layout.width, layout.height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    boxes = _pred_boxes(predictions, score_threshold) + _gt_boxes(info)  # GT drawn on top
    line_w = LINE_WIDTH

    for cam in CAMERAS:
        cam_info = info["cam_infos"][cam]
        img = load_image(dataroot / cam_info["filename"])
        tile = img.resize((layout.tile_w, layout.tile_h), Image.Resampling.BILINEAR)
        canvas.paste(tile, layout.camera_origin(cam))
        ox, oy = layout.camera_origin(cam)
        draw.text((ox + 4, oy + 2), cam, fill=(255, 255, 255))
        clip = (ox, oy, ox + layout.tile_w - 1, oy + layout.tile_h - 1)
        for box in boxes:
            edges = project_box_edges(box.corners, cam_info)
            if not _in_view(edges, img.width, img.height):
                continue
            for uv0, uv1 in edges:
                p = layout.to_panel(cam, np.stack([uv0, uv1]))
                _line_in_rect(draw, p, clip, box.color, line_w)

    # BEV panel
    meta = sample_meta_from_info(info)
    ego_from_global = invert(transform(meta.ego_rotation, meta.ego_translation))
    bx0, by0 = 3 * layout.tile_w, HEADER_HEIGHT
    draw.rectangle((bx0, by0, bx0 + layout.bev_size - 1, by0 + layout.bev_size - 1), fill=(0, 0, 0))
    for r in (10, 20, 30, 40, 50):  # range rings every 10 m
        c = layout.bev_pixels(np.zeros((1, 2)))[0]
        rad = r * layout.bev_size / (2 * BEV_RANGE)
        draw.ellipse((c[0] - rad, c[1] - rad, c[0] + rad, c[1] + rad), outline=(45, 45, 45))
    points = _lidar_points_ego(info, dataroot, ego_from_global)
    if points is not None:
        pix = layout.bev_pixels(points[:, :2])
        keep = (np.abs(points[:, 0]) < BEV_RANGE) & (np.abs(points[:, 1]) < BEV_RANGE)
        arr = np.asarray(canvas).copy()
        ij = np.floor(pix[keep]).astype(int)
        ij[:, 0] = np.clip(ij[:, 0], bx0, bx0 + layout.bev_size - 1)
        ij[:, 1] = np.clip(ij[:, 1], by0, by0 + layout.bev_size - 1)
        arr[ij[:, 1], ij[:, 0]] = POINT_COLOR
        canvas = Image.fromarray(arr)
        draw = ImageDraw.Draw(canvas)
    bev_clip = (bx0, by0, bx0 + layout.bev_size - 1, by0 + layout.bev_size - 1)
    for box in boxes:
        ego = apply(ego_from_global, box.corners)
        foot = layout.bev_pixels(ego[:4, :2])
        for a, b in ((0, 1), (1, 2), (2, 3), (3, 0)):
            _line_in_rect(draw, foot[[a, b]], bev_clip, box.color, line_w)
        centre = foot.mean(axis=0)
        front = (foot[0] + foot[3]) / 2
        _line_in_rect(draw, np.stack([centre, front]), bev_clip, box.color, line_w)
    ego_px = layout.bev_pixels(np.array([[0.0, 0.0], [2.0, 0.0]]))
    draw.line([tuple(ego_px[0]), tuple(ego_px[1])], fill=(255, 255, 255), width=3)

    # header and legend
    n_gt = sum(b.is_gt for b in boxes)
    text = f"{info['sample_token']}   GT: {n_gt} (green)"
    if predictions:
        text += f"   predictions: {len(boxes) - n_gt} (score >= {score_threshold:g}, class colours)"
    draw.text((6, 5), text, fill=(0, 0, 0))
    names = sorted({b.name for b in boxes if not b.is_gt}, key=CLASSES.index)
    for i, name in enumerate(names):
        draw.text((bx0 + 6, by0 + 6 + 12 * i), name, fill=CLASS_COLORS[name])
    return canvas


def _line_in_rect(draw: Any, pts: np.ndarray, rect: tuple[int, int, int, int], color, width: int):
    """Draw segment pts [2, 2] clipped to the rectangle (Liang-Barsky), so nothing leaks into a
    neighbouring tile."""
    (x0, y0), (x1, y1) = pts
    dx, dy = x1 - x0, y1 - y0
    t0, t1 = 0.0, 1.0
    for p, q in (
        (-dx, x0 - rect[0]),
        (dx, rect[2] - x0),
        (-dy, y0 - rect[1]),
        (dy, rect[3] - y0),
    ):
        if p == 0:
            if q < 0:
                return
            continue
        t = q / p
        if p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return
    a = (x0 + t0 * dx, y0 + t0 * dy)
    b = (x0 + t1 * dx, y0 + t1 * dy)
    draw.line([a, b], fill=color, width=width)


def _select(infos: Sequence[dict], num: int, tokens: Sequence[str] | None, src: Path) -> list[dict]:
    if not tokens:
        if num < 1:
            raise UserError(f"--num must be at least 1, got {num}: nothing would be drawn")
        if not infos:
            raise UserError(f"info file {src} holds no samples: nothing to draw; check --split")
        return list(infos[:num])
    by_token = {str(i["sample_token"]): i for i in infos}
    unknown = [t for t in tokens if t not in by_token]
    if unknown:
        raise UserError(f"sample {unknown[0]} is not in info file {src}: check --sample / --split")
    return [by_token[t] for t in tokens]


def visualize(
    dataroot: str | Path,
    version: str,
    split: str,
    out_dir: str | Path,
    infos_path: str | Path | None = None,
    results_path: str | Path | None = None,
    score_threshold: float = 0.3,
    num: int = 4,
    tokens: Sequence[str] | None = None,
) -> list[Path]:
    """Write one PNG per sample into ``out_dir`` -> the paths.

    Samples come from ``infos_path`` (default: the split's info file in ``dataroot``): the first
    ``num`` of them, or those named in ``tokens``. Predictions (``results_path``, a nuScenes
    result JSON) with a score >= ``score_threshold`` are drawn next to the GT. ``version`` only
    names the dataset in the log; no devkit tables are read, so info files of the real data
    (possibly without LiDAR files, then the BEV shows boxes only) work as well.
    """
    dataroot = Path(dataroot)
    if not dataroot.is_dir():
        raise DataError(f"dataroot {dataroot} does not exist: check --dataroot")
    src = Path(infos_path) if infos_path is not None else info_path(dataroot, split)
    infos = load_infos(src)
    chosen = _select(infos, num, tokens, src)
    predictions: Mapping[str, Any] = {}
    if results_path is not None:
        predictions = load_results(Path(results_path))["results"]
        drawn = sum(
            1
            for info in chosen
            for rec in predictions.get(str(info["sample_token"]), [])
            if float(rec.get("detection_score", 0.0)) >= score_threshold
        )
        if drawn == 0:
            logger.warning(
                "%s has no prediction with score >= %.2f for the %d chosen samples: the "
                "pictures show the ground truth only",
                results_path,
                score_threshold,
                len(chosen),
            )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for info in tqdm(chosen, desc="visualize", unit="sample", disable=len(chosen) < 2):
        token = str(info["sample_token"])
        image = render_sample(info, dataroot, predictions.get(token, []), score_threshold)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        path = out_dir / f"{token}.png"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    logger.info("%s %s: wrote %d pictures to %s", version, split, len(paths), out_dir)
    return paths
