"""The synthetic cameras: the rig (six pinhole cameras rounded from a real nuScenes
calibration), a z-buffered ray-casting renderer, and the per-pixel class maps.

Renderer: one ray per pixel; the ground plane (z = 0, procedural road texture), sky, and every
object part (slab test in the object's frame) are intersected; the nearest hit wins (z-buffer
on the camera depth). Lambert shading with a per-scene sun, distance haze, exposure, Gaussian
sensor noise.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labeldistill.geometry import rotz
from labeldistill.synth.raycast import cast_rays, face_normals, ground_material, object_arrays
from labeldistill.synth.world import World

# --- sensor rig (rounded from a real nuScenes calibration; ego frame x fwd, y left, z up) ----
#: camera name -> (translation xyz in the ego frame, optical-axis yaw in degrees, pitch deg,
#: principal-point offset from the image centre as a fraction of (W, H)).
CAMERA_RIG: dict[str, tuple[tuple[float, float, float], float, float, tuple[float, float]]] = {
    "CAM_FRONT": ((1.70, 0.02, 1.51), 0.0, 0.3, (0.010, 0.046)),
    "CAM_FRONT_RIGHT": ((1.55, -0.49, 1.50), -55.0, 0.8, (0.005, 0.050)),
    "CAM_BACK_RIGHT": ((1.02, -0.48, 1.56), -110.0, 0.9, (0.005, 0.057)),
    "CAM_BACK": ((0.03, 0.00, 1.58), 180.0, -1.0, (0.018, 0.035)),
    "CAM_BACK_LEFT": ((1.04, 0.49, 1.59), 110.0, 0.9, (-0.005, 0.048)),
    "CAM_FRONT_LEFT": ((1.52, 0.49, 1.51), 55.0, -0.1, (0.017, 0.033)),
}
#: Key-frame camera timestamps relative to the LiDAR key frame (seconds, as on the real car).
CAMERA_TIME_OFFSET: dict[str, float] = {
    "CAM_FRONT": -0.037,
    "CAM_FRONT_RIGHT": -0.029,
    "CAM_BACK_RIGHT": -0.021,
    "CAM_BACK": -0.012,
    "CAM_BACK_LEFT": -0.002,
    "CAM_FRONT_LEFT": -0.045,
}


def camera_rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """ego_from_camera rotation (3x3) of a camera (x right, y down, z forward) whose optical
    axis has the given yaw (about ego +z) and pitch (positive up)."""
    base = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # cam axes in ego
    p = math.radians(pitch_deg)
    # pitch about the ego y axis (negative rotation tilts +x upwards)
    ry = np.array(
        [[math.cos(p), 0.0, -math.sin(p)], [0.0, 1.0, 0.0], [math.sin(p), 0.0, math.cos(p)]]
    )
    return rotz(math.radians(yaw_deg)) @ ry @ base


def camera_intrinsic(
    name: str, width: int, height: int, fov_front: float, fov_back: float
) -> np.ndarray:
    """3x3 pinhole intrinsic; horizontal field of view ``fov_back`` for CAM_BACK, else
    ``fov_front``."""
    fov = fov_back if name == "CAM_BACK" else fov_front
    f = (width / 2.0) / math.tan(math.radians(fov) / 2.0)
    off = CAMERA_RIG[name][3]
    k = np.array(
        [
            [f, 0.0, width / 2.0 + off[0] * width],
            [0.0, f, height / 2.0 + off[1] * height],
            [0.0, 0.0, 1.0],
        ]
    )
    return np.round(k, 4)


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


_BOX_EDGES = np.array(
    [[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4], [0, 4], [1, 5], [2, 6], [3, 7]]
)


def _clip_near(corners: np.ndarray, near: float) -> np.ndarray:
    """Vertices [V, 3] of a box (corners [8, 3] in the camera frame) clipped to the half-space
    z >= near: the corners in front plus the crossings of the 12 edges with the plane."""
    z = corners[:, 2]
    keep = [corners[z >= near]]
    a, b = corners[_BOX_EDGES[:, 0]], corners[_BOX_EDGES[:, 1]]
    cross = (a[:, 2] - near) * (b[:, 2] - near) < 0
    if cross.any():
        a, b = a[cross], b[cross]
        f = (near - a[:, 2]) / (b[:, 2] - a[:, 2])
        keep.append(a + f[:, None] * (b - a))
    return np.concatenate(keep, axis=0)


@dataclass
class CameraRender:
    """A rendered camera image and per-object pixel statistics.

    ``image`` [H, W, 3] uint8; ``object_ids`` [H, W] index of the nearest object (-1: ground or
    sky); ``visible`` / ``footprint`` {object index: pixels} of pixels where the object is the
    nearest surface / would be seen without occluders.
    """

    image: np.ndarray
    object_ids: np.ndarray
    visible: dict[int, int]
    footprint: dict[int, int]


@functools.lru_cache(maxsize=16)
def _pixel_rays(key: bytes, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera-frame rays (z = 1) of pixel centres [H*W, 3], their lengths [H*W] and the
    vignetting factor [H*W] (float32) for an intrinsic given as float64 bytes."""
    intrinsic = np.frombuffer(key, dtype=np.float64).reshape(3, 3)
    kinv = np.linalg.inv(intrinsic)
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1)
    d_cam = pix @ kinv.T
    r2 = ((u - width / 2) / (width / 2)) ** 2 + ((v - height / 2) / (height / 2)) ** 2
    vignette = (1.0 - 0.12 * r2).ravel().astype(np.float32)
    return d_cam, np.linalg.norm(d_cam, axis=1), vignette


def render_camera(
    world: World,
    t: float,
    ego_from_cam: np.ndarray,
    intrinsic: np.ndarray,
    width: int,
    height: int,
    rng: np.random.Generator,
) -> CameraRender:
    """Render one camera at time t (seconds). ego_from_cam 4x4, intrinsic 3x3."""
    global_from_cam = world.ego_pose(t) @ ego_from_cam
    rot = global_from_cam[:3, :3]
    origin = global_from_cam[:3, 3]
    d_cam, d_len, vignette = _pixel_rays(
        np.ascontiguousarray(intrinsic, dtype=np.float64).tobytes(), width, height
    )
    dirs = d_cam @ rot.T  # [R, 3] global; ray parameter == camera depth
    n_pix = len(dirs)
    st = world.style
    depth = np.full(n_pix, np.inf)
    obj_id = np.full(n_pix, -1, dtype=np.int64)
    rgb = np.zeros((n_pix, 3), dtype=np.float32)
    # ground
    down = dirs[:, 2] < -1e-6
    g = np.nonzero(down)[0]
    tg = -origin[2] / dirs[g, 2]
    depth[g] = tg
    gxy = origin[:2] + dirs[g, :2] * tg[:, None]
    ground_light = st.ambient + st.diffuse * max(float(st.sun_dir[2]), 0.0)
    rgb[g] = ground_material(world, gxy)[0] * np.float32(ground_light)
    # objects
    arrays = object_arrays(world)
    cam_from_global = np.linalg.inv(global_from_cam)
    corners = arrays.corners(t) @ cam_from_global[:3, :3].T + cam_from_global[:3, 3]  # [O, 8, 3]
    zmin, zmax = corners[..., 2].min(1), corners[..., 2].max(1)
    cand_rays: list[np.ndarray] = []
    cand_objs: list[int] = []
    lim = np.array([width + 1, height + 1])
    for i in np.nonzero((zmax > 0.05) & (zmin < 150.0))[0]:
        front = corners[i] if zmin[i] >= 0.05 else _clip_near(corners[i], 0.05)
        uv = front[:, :2] / front[:, 2:3] @ intrinsic[:2, :2].T + intrinsic[:2, 2]
        u0, v0 = np.floor(np.clip(uv.min(0), -1, lim)).astype(int)
        u1, v1 = np.ceil(np.clip(uv.max(0), -1, lim)).astype(int)
        u0, v0 = max(u0, 0), max(v0, 0)
        u1, v1 = min(u1 + 1, width), min(v1 + 1, height)
        if u1 <= u0 or v1 <= v0:
            continue
        idx = (np.arange(v0, v1)[:, None] * width + np.arange(u0, u1)[None]).ravel()
        idx = idx[depth[idx] > zmin[i] - 0.01]  # pixels where the ground is nearer cannot see it
        if len(idx):
            cand_rays.append(idx)
            cand_objs.append(int(i))
    hits = cast_rays(arrays, t, origin, dirs, cand_rays, cand_objs, np.full(n_pix, np.inf))
    win = np.nonzero(hits.t < depth)[0]
    depth[win] = hits.t[win]
    obj_id[win] = hits.obj[win]
    if len(win):
        part, face = hits.part[win], hits.face[win]
        col = np.where((face == 5)[:, None], arrays.top_rgb[part], arrays.side_rgb[part])
        nrm = face_normals(arrays, hits.obj[win], face)
        light = st.ambient * (0.875 + 0.125 * nrm[:, 2]) + st.diffuse * np.clip(
            nrm @ st.sun_dir, 0.0, None
        )
        rgb[win] = col * light[:, None].astype(np.float32)
    footprint = {int(i): int(hits.footprint[i]) for i in np.nonzero(hits.footprint)[0]}
    # sky
    finite = np.isfinite(depth)
    sky = np.nonzero(~finite)[0]
    if len(sky):
        dn = dirs[sky] / d_len[sky, None]
        elev = np.clip(dn[:, 2], 0.0, 1.0)[:, None] ** 0.6
        glow = np.clip(dn @ st.sun_dir, 0.0, 1.0)[:, None] ** 40
        rgb[sky] = st.sky_horizon * (1 - elev) + st.sky_zenith * elev + 0.3 * glow
    # haze
    with np.errstate(invalid="ignore", over="ignore"):
        fog = np.where(finite, 1.0 - np.exp(-depth * d_len / st.haze_range), 0.0).astype(np.float32)
    rgb += (st.haze.astype(np.float32)[None] - rgb) * fog[:, None]
    # sensor: exposure, per-camera gain, vignetting, noise
    gain = (255.0 * st.exposure * rng.uniform(0.92, 1.08) * rng.uniform(0.96, 1.04, 3)).astype(
        np.float32
    )
    img = rgb * vignette[:, None] * gain
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(st.noise_sigma)
    image = np.clip(img, 0, 255).astype(np.uint8).reshape(height, width, 3)
    counts = np.bincount(obj_id[obj_id >= 0], minlength=len(world.objects))
    visible = {i: int(counts[i]) for i in footprint}
    return CameraRender(
        image=image, object_ids=obj_id.reshape(height, width), visible=visible, footprint=footprint
    )
