"""The 3D world of one synthetic scene: a straight road, the ego vehicle driving along it, the
sensor rig, and objects of the 10 detection classes built from shaded cuboid parts.

Everything here is a pure function of a seed, so the renderer, the LiDAR ray caster and the
annotation writer (``synthetic.py``) all see the same world. Coordinates: global frame, metres,
z up, ground plane z = 0; time ``t`` in seconds from the first key sample of the scene.
Object sizes follow nuScenes ``(w, l, h)``; an object's parts are cuboids in its own frame
(x along the heading / length, y along the width, z up, origin at the box centre).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from labeldistill.structures import CLASSES

#: Detection classes in index order (METHOD.md section 2).
DETECTION_CLASSES: tuple[str, ...] = CLASSES

#: Mean nuScenes sizes (w, l, h) in metres per detection class (rounded dataset averages).
MEAN_SIZE: dict[str, tuple[float, float, float]] = {
    "car": (1.95, 4.62, 1.73),
    "truck": (2.50, 6.90, 2.85),
    "construction_vehicle": (2.80, 6.40, 3.20),
    "bus": (2.95, 11.0, 3.45),
    "trailer": (2.90, 12.0, 3.85),
    "barrier": (2.50, 0.50, 0.98),
    "motorcycle": (0.77, 2.10, 1.47),
    "bicycle": (0.61, 1.70, 1.29),
    "pedestrian": (0.67, 0.73, 1.76),
    "traffic_cone": (0.41, 0.41, 1.07),
}

#: Relative class frequencies (roughly nuScenes annotation counts, rare classes lifted a
#: little so that every class has enough instances for an AP on a small set).
CLASS_FREQ: dict[str, float] = {
    "car": 0.36,
    "pedestrian": 0.18,
    "barrier": 0.12,
    "traffic_cone": 0.09,
    "truck": 0.08,
    "bus": 0.035,
    "trailer": 0.035,
    "construction_vehicle": 0.035,
    "motorcycle": 0.03,
    "bicycle": 0.03,
}

#: nuScenes category names used for each detection class, with their relative weights.
CATEGORY_OF_CLASS: dict[str, tuple[tuple[str, float], ...]] = {
    "car": (("vehicle.car", 1.0),),
    "truck": (("vehicle.truck", 1.0),),
    "construction_vehicle": (("vehicle.construction", 1.0),),
    "bus": (("vehicle.bus.rigid", 1.0),),
    "trailer": (("vehicle.trailer", 1.0),),
    "barrier": (("movable_object.barrier", 1.0),),
    "motorcycle": (("vehicle.motorcycle", 1.0),),
    "bicycle": (("vehicle.bicycle", 1.0),),
    "pedestrian": (
        ("human.pedestrian.adult", 0.85),
        ("human.pedestrian.construction_worker", 0.1),
        ("human.pedestrian.police_officer", 0.05),
    ),
    "traffic_cone": (("movable_object.trafficcone", 1.0),),
}

VEHICLES = ("car", "truck", "construction_vehicle", "bus", "trailer")
CYCLES = ("motorcycle", "bicycle")
MOVING_SPEED = 0.2  # m/s; above: "moving" attributes (as the published result formatter)

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
LIDAR_TRANSLATION = (0.94, 0.0, 1.84)
LIDAR_YAW = -math.pi / 2  # the LIDAR_TOP x axis points to the right of the car, as in nuScenes
EGO_SIZE = (1.90, 4.70)  # (w, l) of the ego car; its box centre is EGO_CENTER_X ahead of the origin
EGO_CENTER_X = 1.35


def rotz(angle: float) -> np.ndarray:
    """3x3 rotation about +z."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


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


# ---------------------------------------------------------------------------------------------
# objects
# ---------------------------------------------------------------------------------------------


@dataclass
class SimObject:
    """One object of the world, moving with constant velocity along a straight line.

    ``parts``: [K, 6] part centres (3, object frame, relative to the box centre) and half sizes
    (3); ``side_rgb``/``top_rgb``: [K, 3] colours in [0, 1]; ``reflectivity``: LiDAR intensity
    scale. ``cls`` is an index into :data:`DETECTION_CLASSES`, or -1 for unannotated scenery
    (buildings, poles, trees).
    """

    cls: int
    category: str
    size: tuple[float, float, float]  # nuScenes (w, l, h)
    p0: np.ndarray  # [2] global xy of the box centre at t = 0
    velocity: np.ndarray  # [2] global m/s
    yaw: float
    parts: np.ndarray
    side_rgb: np.ndarray
    top_rgb: np.ndarray
    reflectivity: float
    attribute: str = ""
    z0: float = 0.0  # bottom of the box

    def center(self, t: float) -> np.ndarray:
        """[3] box centre at time t."""
        xy = self.p0 + self.velocity * t
        return np.array([xy[0], xy[1], self.z0 + self.size[2] / 2.0])

    @property
    def speed(self) -> float:
        return float(np.hypot(*self.velocity))


# Shared colour palettes: classes draw from overlapping palettes on purpose.
_PAINT = np.array(
    [
        [0.92, 0.92, 0.90], [0.12, 0.12, 0.13], [0.55, 0.56, 0.58], [0.72, 0.73, 0.75],
        [0.62, 0.10, 0.10], [0.12, 0.22, 0.50], [0.15, 0.32, 0.20], [0.70, 0.62, 0.45],
        [0.85, 0.55, 0.10], [0.90, 0.78, 0.15], [0.35, 0.20, 0.12], [0.40, 0.45, 0.60],
    ]
)  # fmt: skip
_CLOTH = np.array(
    [
        [0.10, 0.10, 0.12], [0.25, 0.28, 0.45], [0.55, 0.12, 0.12], [0.85, 0.85, 0.82],
        [0.35, 0.35, 0.32], [0.20, 0.40, 0.25], [0.75, 0.60, 0.20], [0.90, 0.45, 0.10],
        [0.45, 0.30, 0.55], [0.60, 0.62, 0.65],
    ]
)  # fmt: skip
_GLASS = np.array([0.10, 0.13, 0.17])
_TYRE = np.array([0.06, 0.06, 0.06])
_SKIN = np.array([[0.85, 0.67, 0.52], [0.55, 0.38, 0.26], [0.35, 0.24, 0.17]])


def _pick(
    rng: np.random.Generator, palette: np.ndarray, weights: list[float] | None = None
) -> np.ndarray:
    p = None if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    base = palette[rng.choice(len(palette), p=p)]
    return np.clip(base * rng.uniform(0.85, 1.15) + rng.normal(0.0, 0.03, 3), 0.0, 1.0)


class _Parts:
    """Accumulates cuboid parts in the object frame, from bottom-based coordinates."""

    def __init__(self, size: tuple[float, float, float]) -> None:
        self.w, self.l, self.h = size
        self.rows: list[list[float]] = []
        self.side: list[np.ndarray] = []
        self.top: list[np.ndarray] = []

    def add(
        self,
        x0: float,
        x1: float,
        y0: float,
        y1: float,
        z0: float,
        z1: float,
        side: np.ndarray,
        top: np.ndarray | None = None,
    ) -> None:
        """Part spanning [x0, x1] x [y0, y1] x [z0, z1]; x, y relative to the centre, z from the
        bottom of the box; clamped 2 cm inside the annotation box."""
        m = 0.02
        hl, hw = self.l / 2 - m, self.w / 2 - m
        x0, x1 = max(x0, -hl), min(x1, hl)
        y0, y1 = max(y0, -hw), min(y1, hw)
        z0, z1 = max(z0, m), min(z1, self.h - m)
        if x1 <= x0 or y1 <= y0 or z1 <= z0:
            return
        self.rows.append(
            [
                (x0 + x1) / 2,
                (y0 + y1) / 2,
                (z0 + z1) / 2 - self.h / 2,
                (x1 - x0) / 2,
                (y1 - y0) / 2,
                (z1 - z0) / 2,
            ]
        )
        self.side.append(np.asarray(side, dtype=np.float64))
        self.top.append(np.asarray(side if top is None else top, dtype=np.float64))


def _build_parts(
    cls: str, size: tuple[float, float, float], moving: bool, rng: np.random.Generator
) -> _Parts:
    """Cuboid parts of one object of class ``cls`` (size (w, l, h))."""
    pp = _Parts(size)
    w, l, h = size
    hl, hw = l / 2, w / 2
    if cls == "car":
        paint = _pick(rng, _PAINT, [4, 3, 3, 3, 2, 2, 1, 1, 0.3, 0.3, 0.5, 1])
        body_top = h * rng.uniform(0.48, 0.58)
        pp.add(-hl, hl, -hw, hw, 0.18, body_top, paint)
        front, back = hl * rng.uniform(0.05, 0.35), -hl * rng.uniform(0.55, 0.85)
        pp.add(back, front, -hw * 0.88, hw * 0.88, body_top, h * 0.9, _GLASS, paint)
        pp.add(back + 0.1, front - 0.1, -hw * 0.84, hw * 0.84, h * 0.9, h, paint)
        for ax in (hl * 0.62, -hl * 0.62):
            pp.add(ax - 0.33, ax + 0.33, -hw, hw, 0.0, 0.42, _TYRE)
    elif cls in ("truck", "construction_vehicle"):
        paint = (
            _pick(rng, _PAINT, [3, 1, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1])
            if cls == "truck"
            else _pick(rng, _PAINT, [1, 0.5, 0.5, 0.5, 0.5, 0.3, 0.3, 0.5, 4, 5, 0.5, 0.3])
        )
        cab_len = rng.uniform(1.8, 2.4)
        cab_h = h * (rng.uniform(0.75, 0.95) if cls == "truck" else rng.uniform(0.8, 1.0))
        pp.add(hl - cab_len, hl, -hw, hw, 0.45, cab_h * 0.62, paint)
        pp.add(hl - cab_len, hl - 0.25, -hw * 0.95, hw * 0.95, cab_h * 0.62, cab_h, _GLASS, paint)
        if cls == "truck":
            cargo = _pick(rng, _PAINT, [4, 1, 2, 3, 1, 1, 1, 1, 0.5, 0.5, 1, 1])
            pp.add(-hl, hl - cab_len - 0.15, -hw, hw, 0.6, h, cargo)
        else:
            pp.add(-hl, hl - cab_len - 0.1, -hw, hw, 0.45, h * 0.45, paint)  # chassis / engine
            pp.add(-hl, -hl + 1.0, -hw * 0.9, hw * 0.9, 0.6, h * 0.55, paint * 0.8)  # counterweight
            pp.add(-hl * 0.2, hl, -0.25, 0.25, h * 0.55, h, paint)  # boom / arm
        for ax in (hl * 0.7, -hl * 0.35, -hl * 0.7):
            pp.add(ax - 0.5, ax + 0.5, -hw, hw, 0.0, 0.95, _TYRE)
    elif cls == "bus":
        paint = _pick(rng, _PAINT, [3, 0.5, 1, 2, 2, 2, 1, 0.5, 1, 1.5, 0.2, 1])
        pp.add(-hl, hl, -hw, hw, 0.35, h * 0.45, paint)
        pp.add(-hl + 0.3, hl, -hw, hw, h * 0.45, h * 0.85, _GLASS, paint)
        pp.add(-hl, hl, -hw, hw, h * 0.85, h, paint)
        pp.add(-hl, -hl + 0.3, -hw, hw, h * 0.45, h * 0.85, paint)
        for ax in (hl * 0.7, -hl * 0.6):
            pp.add(ax - 0.55, ax + 0.55, -hw, hw, 0.0, 1.0, _TYRE)
    elif cls == "trailer":
        paint = _pick(rng, _PAINT, [4, 1, 2, 3, 1, 1.5, 0.5, 1, 0.5, 0.5, 0.5, 1])
        pp.add(-hl, hl, -hw, hw, 1.2, h, paint, paint * 0.9)
        pp.add(hl - 0.8, hl - 0.4, -hw * 0.5, hw * 0.5, 0.0, 1.2, paint * 0.5)  # landing gear
        for ax in (-hl * 0.6, -hl * 0.78):
            pp.add(ax - 0.5, ax + 0.5, -hw, hw, 0.0, 1.0, _TYRE)
    elif cls == "barrier":
        kind = rng.integers(3)
        if kind == 0:  # concrete jersey barrier
            c = _pick(rng, _PAINT, [1, 0, 3, 4, 0, 0, 0, 1, 0, 0, 0, 0])
            pp.add(-hl, hl, -hw, hw, 0.0, h * 0.35, c)
            pp.add(-hl * 0.5, hl * 0.5, -hw, hw, h * 0.35, h, c)
        else:  # plastic / striped barrier
            c1 = _pick(rng, _PAINT, [4, 0, 0, 0, 3, 0, 0, 0, 3, 2, 0, 0])
            c2 = _pick(rng, _PAINT, [3, 0, 1, 1, 2, 0, 0, 0, 1, 1, 0, 0])
            n = 4
            for i in range(n):
                y0 = -hw + i * w / n
                pp.add(-hl * 0.3, hl * 0.3, y0, y0 + w / n, h * 0.55, h, c1 if i % 2 == 0 else c2)
            pp.add(-hl * 0.3, hl * 0.3, -hw, -hw + 0.12, 0.0, h * 0.55, c2)
            pp.add(-hl * 0.3, hl * 0.3, hw - 0.12, hw, 0.0, h * 0.55, c2)
            pp.add(-hl, hl, -hw, -hw + 0.3, 0.0, 0.08, c2 * 0.6)
            pp.add(-hl, hl, hw - 0.3, hw, 0.0, 0.08, c2 * 0.6)
    elif cls == "traffic_cone":
        c = _pick(rng, _PAINT, [0.5, 0, 0, 0, 1, 0, 0, 0, 6, 1, 0, 0])
        white = np.array([0.93, 0.93, 0.9])
        pp.add(-hl, hl, -hw, hw, 0.0, 0.06, c * 0.5)
        steps = 4
        for i in range(steps):
            s = 0.8 - 0.55 * i / steps
            z0 = 0.06 + (h - 0.06) * i / steps
            col = white if i == 2 else c
            pp.add(-hl * s, hl * s, -hw * s, hw * s, z0, z0 + (h - 0.06) / steps, col)
    elif cls in CYCLES:
        frame = _pick(rng, _PAINT, [2, 3, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1])
        r = 0.33 if cls == "bicycle" else 0.32
        for ax in (hl - r, -hl + r):
            pp.add(ax - r, ax + r, -0.04, 0.04, 0.0, 2 * r, _TYRE)
        if cls == "bicycle":
            pp.add(-hl + r, hl - r, -0.05, 0.05, 2 * r * 0.8, 2 * r * 1.1, frame)
            pp.add(hl - r - 0.1, hl - r + 0.05, -0.25, 0.25, 2 * r * 1.4, 2 * r * 1.5, frame)  # bar
        else:
            pp.add(-hl * 0.55, hl * 0.55, -hw * 0.45, hw * 0.45, 0.25, 0.75, frame)
            pp.add(hl * 0.35, hl * 0.55, -hw, hw, 0.9, 1.0, frame * 0.5)  # handlebar
        if moving:  # rider
            cloth = _pick(rng, _CLOTH)
            top = h
            pp.add(-0.25, 0.2, -0.2, 0.2, 0.6, 1.0, _pick(rng, _CLOTH))
            pp.add(-0.25, 0.15, -0.22, 0.22, 1.0, top - 0.28, cloth)
            head = _SKIN[rng.integers(3)] if rng.random() < 0.5 else _pick(rng, _PAINT)
            pp.add(-0.18, 0.05, -0.11, 0.11, top - 0.28, top, head)
        else:
            pp.add(-hl * 0.4, hl * 0.1, -0.1, 0.1, 2 * r * 1.1, h, frame * 0.7)  # saddle post
    elif cls == "pedestrian":
        cloth = _pick(rng, _CLOTH)
        legs = _pick(rng, _CLOTH)
        hip = h * 0.47
        pp.add(-0.12, 0.12, -0.2, -0.02, 0.0, hip, legs)
        pp.add(-0.12, 0.12, 0.02, 0.2, 0.0, hip, legs)
        pp.add(-0.14, 0.14, -hw, hw, hip, h * 0.84, cloth)
        pp.add(-0.11, 0.11, -0.1, 0.1, h * 0.84, h, _SKIN[rng.integers(3)], _pick(rng, _CLOTH))
    return pp


def make_object(
    cls: str, p0: np.ndarray, velocity: np.ndarray, yaw: float, rng: np.random.Generator
) -> SimObject:
    """An object of detection class ``cls`` with a size about +-15 % around the class mean."""
    mw, ml, mh = MEAN_SIZE[cls]
    g = rng.uniform(0.9, 1.1)
    size = (
        round(mw * g * rng.uniform(0.94, 1.06), 3),
        round(ml * g * rng.uniform(0.94, 1.06), 3),
        round(mh * g * rng.uniform(0.94, 1.06), 3),
    )
    names, weights = zip(*CATEGORY_OF_CLASS[cls])
    category = names[rng.choice(len(names), p=np.asarray(weights) / sum(weights))]
    moving = float(np.hypot(*velocity)) > MOVING_SPEED
    parts = _build_parts(cls, size, moving, rng)
    return SimObject(
        cls=DETECTION_CLASSES.index(cls),
        category=category,
        size=size,
        p0=np.asarray(p0, dtype=np.float64),
        velocity=np.asarray(velocity, dtype=np.float64),
        yaw=float(yaw),
        parts=np.asarray(parts.rows, dtype=np.float64),
        side_rgb=np.stack(parts.side),
        top_rgb=np.stack(parts.top),
        reflectivity=float(rng.uniform(15, 90) if cls != "traffic_cone" else rng.uniform(60, 120)),
        attribute=attribute_of(cls, moving),
    )


def attribute_of(cls: str, moving: bool) -> str:
    """nuScenes attribute name of an object (the rule of the published result formatter)."""
    if cls in VEHICLES:
        if moving:
            return "vehicle.moving"
        return "vehicle.stopped" if cls == "bus" else "vehicle.parked"
    if cls in CYCLES:
        return "cycle.with_rider" if moving else "cycle.without_rider"
    if cls == "pedestrian":
        return "pedestrian.moving" if moving else "pedestrian.standing"
    return ""


def make_scenery(
    size: tuple[float, float, float],
    center_xy: np.ndarray,
    yaw: float,
    rgb: np.ndarray,
    refl: float,
) -> SimObject:
    """An unannotated cuboid (building, pole...) standing on the ground."""
    w, l, h = size
    return SimObject(
        cls=-1,
        category="",
        size=size,
        p0=np.asarray(center_xy, dtype=np.float64),
        velocity=np.zeros(2),
        yaw=yaw,
        parts=np.array([[0.0, 0.0, 0.0, l / 2, w / 2, h / 2]]),
        side_rgb=np.asarray(rgb, dtype=np.float64)[None],
        top_rgb=np.asarray(rgb, dtype=np.float64)[None] * 0.8,
        reflectivity=refl,
    )


# ---------------------------------------------------------------------------------------------
# scene layout
# ---------------------------------------------------------------------------------------------


@dataclass
class Road:
    """A straight road: centre line through ``origin`` along ``heading``; lateral offsets are
    positive to the left of the driving direction of the ego car."""

    origin: np.ndarray  # [2]
    heading: float
    lanes_per_dir: int
    lane_width: float
    parking: float  # width of the parking strip beside the road (0: none)
    sidewalk: float

    @property
    def direction(self) -> np.ndarray:
        return np.array([math.cos(self.heading), math.sin(self.heading)])

    @property
    def normal(self) -> np.ndarray:
        return np.array([-math.sin(self.heading), math.cos(self.heading)])

    @property
    def half_width(self) -> float:
        return self.lanes_per_dir * self.lane_width

    def point(self, s: float | np.ndarray, lateral: float | np.ndarray) -> np.ndarray:
        """Global xy [..., 2] of road coordinates (s along, lateral left)."""
        s = np.asarray(s, dtype=np.float64)[..., None]
        lat = np.asarray(lateral, dtype=np.float64)[..., None]
        return self.origin + s * self.direction + lat * self.normal


@dataclass
class Style:
    """Appearance of a scene: lighting, sky, ground materials, sensor quality."""

    sun_dir: np.ndarray  # [3] unit vector towards the sun (global)
    ambient: float
    diffuse: float
    sky_horizon: np.ndarray
    sky_zenith: np.ndarray
    haze: np.ndarray
    haze_range: float
    asphalt: np.ndarray
    marking: np.ndarray
    sidewalk: np.ndarray
    verge: np.ndarray
    exposure: float
    noise_sigma: float
    jpeg_quality: tuple[int, int]


@dataclass
class World:
    """One scene: road, ego trajectory, objects (annotated classes first) and style."""

    road: Road
    ego_lateral: float
    ego_s0: float
    ego_v0: float
    ego_acc: float
    objects: list[SimObject]
    style: Style
    description: str
    noise_texture: np.ndarray = field(repr=False)  # [T, T] float32 in [-1, 1]

    def ego_s(self, t: float) -> float:
        return self.ego_s0 + self.ego_v0 * t + 0.5 * self.ego_acc * t * t

    def ego_velocity(self, t: float) -> float:
        return self.ego_v0 + self.ego_acc * t

    def ego_pose(self, t: float) -> np.ndarray:
        """global_from_ego 4x4 at time t (flat ground, yaw only)."""
        m = np.eye(4)
        m[:3, :3] = rotz(self.road.heading)
        m[:2, 3] = self.road.point(self.ego_s(t), self.ego_lateral)
        return m


def _obb_overlap(
    cand_c: np.ndarray,
    cand_yaw: float,
    cand_half: tuple[float, float],
    cs: np.ndarray,
    yaws: np.ndarray,
    halves: np.ndarray,
    margin: float,
) -> np.ndarray:
    """Separating-axis overlap test of one oriented rectangle against many, at many times.

    cand_c [T, 2]; cs [O, T, 2]; yaws [O]; halves [O, 2] (half length, half width) -> [O] bool
    (overlap at any time)."""
    d = cs - cand_c[None]  # [O, T, 2]
    ua = np.array([math.cos(cand_yaw), math.sin(cand_yaw)])
    va = np.array([-ua[1], ua[0]])
    ub = np.stack([np.cos(yaws), np.sin(yaws)], axis=1)  # [O, 2]
    vb = np.stack([-ub[:, 1], ub[:, 0]], axis=1)
    sep = np.zeros(d.shape[:2], dtype=bool)
    for axis in (ua[None].repeat(len(yaws), 0), va[None].repeat(len(yaws), 0), ub, vb):
        ra = np.abs(cand_half[0] * (axis @ ua)) + np.abs(cand_half[1] * (axis @ va))
        rb = np.abs(halves[:, 0] * np.sum(ub * axis, 1)) + np.abs(
            halves[:, 1] * np.sum(vb * axis, 1)
        )
        proj = np.abs(np.einsum("otk,ok->ot", d, axis))
        sep |= proj > (ra + rb + margin)[:, None]
    return (~sep).any(axis=1)


class _Placer:
    """Rejection sampler keeping objects (and the ego car) from overlapping at all times."""

    def __init__(
        self, world_times: np.ndarray, key_times: np.ndarray, ego_xy: np.ndarray, ego_yaw: float
    ) -> None:
        self.times = world_times  # [T]
        self.key_times = key_times
        self.centers: list[np.ndarray] = []  # [T, 2] each
        self.yaws: list[float] = []
        self.halves: list[tuple[float, float]] = []
        self.ego_xy = ego_xy  # [T, 2] ego origin over world_times
        off = np.array([math.cos(ego_yaw), math.sin(ego_yaw)]) * EGO_CENTER_X
        self.centers.append(ego_xy + off)
        self.yaws.append(ego_yaw)
        self.halves.append((EGO_SIZE[1] / 2, EGO_SIZE[0] / 2))

    def fits(self, obj: SimObject, margin: float = 0.25) -> bool:
        c = obj.p0[None] + obj.velocity[None] * self.times[:, None]
        if np.min(np.linalg.norm(c - self.ego_xy, axis=1)) < 3.3:
            return False
        hit = _obb_overlap(
            c,
            obj.yaw,
            (obj.size[1] / 2, obj.size[0] / 2),
            np.stack(self.centers),
            np.asarray(self.yaws),
            np.asarray(self.halves),
            margin,
        )
        return not bool(hit.any())

    def add(self, obj: SimObject) -> None:
        self.centers.append(obj.p0[None] + obj.velocity[None] * self.times[:, None])
        self.yaws.append(obj.yaw)
        self.halves.append((obj.size[1] / 2, obj.size[0] / 2))


#: Mean objects per spawn (groups of cones, barriers, pedestrians) including placement
#: rejections, measured on generated sets; keeps the class frequencies of CLASS_FREQ.
SPAWN_GROUP_SIZE = {
    "traffic_cone": 4.5,
    "barrier": 3.2,
    "pedestrian": 1.5,
    "bicycle": 0.6,
    "bus": 0.7,
}
ANNOTATION_RANGE = 55.0  # metres (2D, from the ego origin): objects annotated in a sample
MAX_PER_SAMPLE = 40
MIN_PER_SAMPLE = 15


def build_world(seed: int, scene_index: int, num_samples: int) -> World:
    """The world of one scene; a pure function of (seed, scene_index, num_samples)."""
    rng = np.random.default_rng([seed, scene_index, 0x5CE7E])
    road = Road(
        origin=rng.uniform(300.0, 1800.0, 2),
        heading=float(rng.uniform(-math.pi, math.pi)),
        lanes_per_dir=int(rng.choice([1, 2], p=[0.4, 0.6])),
        lane_width=float(rng.uniform(3.2, 3.7)),
        parking=float(rng.choice([0.0, 2.5], p=[0.3, 0.7])),
        sidewalk=float(rng.uniform(2.5, 4.5)),
    )
    hw = road.half_width
    ego_lane = int(rng.integers(road.lanes_per_dir))
    ego_lateral = -(ego_lane + 0.5) * road.lane_width
    stopped = rng.random() < 0.15
    ego_v0 = 0.0 if stopped else float(rng.uniform(3.0, 11.0))
    ego_acc = 0.0 if stopped else float(rng.uniform(-0.5, 0.5))
    duration = 0.5 * (num_samples - 1)
    world_times = np.arange(-0.5, duration + 0.55, 0.1)
    key_times = 0.5 * np.arange(num_samples)
    ego_s = ego_v0 * world_times + 0.5 * ego_acc * world_times**2
    ego_xy = road.point(ego_s, np.full_like(ego_s, ego_lateral))
    placer = _Placer(world_times, key_times, ego_xy, road.heading)
    key_ego = road.point(
        ego_v0 * key_times + 0.5 * ego_acc * key_times**2, np.full(num_samples, ego_lateral)
    )

    objects: list[SimObject] = []
    scenery: list[SimObject] = []
    s_lo, s_hi = -90.0, float(ego_s.max()) + 90.0
    kerb = hw + road.parking
    walk = kerb + road.sidewalk
    # --- scenery: poles and trees on the sidewalks, buildings beyond the open area ----------
    for side in (-1.0, 1.0):
        s = s_lo + rng.uniform(0, 10)
        while s < s_hi:
            lat = side * (walk - 0.4)
            if rng.random() < 0.5:
                obj = make_scenery(
                    (0.25, 0.25, float(rng.uniform(5, 8))),
                    road.point(s, lat),
                    road.heading,
                    np.array([0.45, 0.45, 0.45]),
                    40.0,
                )
                if placer.fits(obj, 0.1):
                    placer.add(obj)
                    scenery.append(obj)
            else:
                trunk = make_scenery(
                    (0.35, 0.35, 2.8),
                    road.point(s, lat),
                    road.heading,
                    np.array([0.3, 0.22, 0.15]),
                    20.0,
                )
                if placer.fits(trunk, 0.1):
                    placer.add(trunk)
                    scenery.append(trunk)
                    crown = make_scenery(
                        (3.0, 3.0, 3.0),
                        road.point(s, lat),
                        road.heading + 0.4,
                        np.array([0.16, 0.33, 0.12]) * rng.uniform(0.7, 1.3),
                        15.0,
                    )
                    crown.z0 = 2.6
                    scenery.append(crown)
            s += rng.uniform(12, 30)
        s = s_lo
        while s < s_hi:
            length = float(rng.uniform(10, 40))
            depth = float(rng.uniform(10, 25))
            height = float(rng.uniform(6, 28))
            lat = side * (34.0 + rng.uniform(0, 6) + depth / 2)
            rgb = _pick(
                rng,
                np.array(
                    [
                        [0.75, 0.72, 0.66],
                        [0.55, 0.40, 0.32],
                        [0.6, 0.62, 0.65],
                        [0.85, 0.85, 0.8],
                        [0.4, 0.42, 0.45],
                    ]
                ),
            )
            b = make_scenery(
                (depth, length, height), road.point(s + length / 2, lat), road.heading, rgb, 30.0
            )
            placer.add(b)
            scenery.append(b)
            s += length + rng.uniform(2, 15)

    # --- annotated objects ---------------------------------------------------------------
    classes = list(CLASS_FREQ)
    # a spawn places a group of objects for some classes: weight by objects, not by spawns
    probs = np.array([CLASS_FREQ[c] / SPAWN_GROUP_SIZE.get(c, 1.0) for c in classes])
    probs /= probs.sum()
    target = int(rng.integers(15, 30))
    counts = np.zeros(num_samples, dtype=int)

    def in_range(o: SimObject) -> np.ndarray:
        c = o.p0[None] + o.velocity[None] * key_times[:, None]
        return np.linalg.norm(c - key_ego, axis=1) <= ANNOTATION_RANGE

    def try_add(o: SimObject) -> bool:
        r = in_range(o)
        if not r.any() or (counts[r] >= MAX_PER_SAMPLE).any() or not placer.fits(o):
            return False
        placer.add(o)
        objects.append(o)
        counts[r] += 1
        return True

    construction_lane = rng.random() < 0.35
    attempts = 0
    while attempts < 3000 and counts.min() < target:
        attempts += 1
        k = int(np.argmin(counts + rng.uniform(0, 0.5, num_samples)))
        s_ego = float(ego_v0 * key_times[k] + 0.5 * ego_acc * key_times[k] ** 2)
        s = s_ego + float(rng.uniform(-ANNOTATION_RANGE, ANNOTATION_RANGE))
        t_k = float(key_times[k])
        cls = classes[int(rng.choice(len(classes), p=probs))]
        for o in _spawn(cls, s, t_k, road, kerb, walk, construction_lane, rng):
            try_add(o)

    # every class in every scene, close enough (25 m) for every class's evaluation range, so
    # that even a two-scene split of a few samples has ground truth for all ten classes
    def near_somewhere(o: SimObject) -> bool:
        c = o.p0[None] + o.velocity[None] * key_times[:, None]
        return bool((np.linalg.norm(c - key_ego, axis=1) <= 25.0).any())

    for cls in classes:
        ci = DETECTION_CLASSES.index(cls)
        tries = 0
        while tries < 600 and not any(o.cls == ci and near_somewhere(o) for o in objects):
            tries += 1
            k = int(rng.integers(num_samples))
            s_ego = float(ego_v0 * key_times[k] + 0.5 * ego_acc * key_times[k] ** 2)
            s = s_ego + float(rng.uniform(-22.0, 22.0))
            for o in _spawn(cls, s, float(key_times[k]), road, kerb, walk, construction_lane, rng)[
                :1
            ]:
                if near_somewhere(o):
                    try_add(o)
    desc = (
        f"Synthetic: straight road, {road.lanes_per_dir} lane(s) per direction"
        + (", parking strip" if road.parking else "")
        + (", construction zone" if construction_lane else "")
        + (", ego stopped" if stopped else f", ego {ego_v0:.0f} m/s")
    )
    return World(
        road=road,
        ego_lateral=ego_lateral,
        ego_s0=0.0,
        ego_v0=ego_v0,
        ego_acc=ego_acc,
        objects=objects + scenery,
        style=_make_style(rng),
        description=desc,
        noise_texture=rng.uniform(-1.0, 1.0, (256, 256)).astype(np.float32),
    )


def _spawn(
    cls: str,
    s: float,
    t: float,
    road: Road,
    kerb: float,
    walk: float,
    construction_lane: bool,
    rng: np.random.Generator,
) -> list[SimObject]:
    """Candidate object(s) of class ``cls`` near road position ``s`` at time ``t``."""
    hw, lw = road.half_width, road.lane_width
    heading = road.heading
    out: list[SimObject] = []

    def at(s_: float, lat: float, speed: float, yaw: float) -> tuple[np.ndarray, np.ndarray]:
        v = speed * np.array([math.cos(yaw), math.sin(yaw)])
        return road.point(s_, lat) - v * t, v

    def lane_lat() -> tuple[float, float]:
        lane = int(rng.integers(road.lanes_per_dir))
        side = -1.0 if rng.random() < 0.55 else 1.0
        lat = side * (lane + 0.5) * lw + rng.normal(0, 0.15)
        yaw = heading if side < 0 else heading + math.pi
        return lat, yaw

    def open_lat() -> float:
        side = -1.0 if rng.random() < 0.5 else 1.0
        return side * float(rng.uniform(walk + 1.5, 31.0))

    if cls in VEHICLES:
        moving_p = {
            "car": 0.5,
            "truck": 0.5,
            "bus": 0.6,
            "construction_vehicle": 0.2,
            "trailer": 0.15,
        }[cls]
        r = rng.random()
        if r < moving_p:
            lat, yaw = lane_lat()
            speed = float(
                rng.uniform(2.0, 6.0) if cls == "construction_vehicle" else rng.uniform(3.0, 13.0)
            )
            p0, v = at(s, lat, speed, yaw)
            out.append(make_object(cls, p0, v, yaw, rng))
        elif r < moving_p + 0.1 and cls in ("car", "bus", "truck"):  # stopped in a lane
            lat, yaw = lane_lat()
            p0, v = at(s, lat, 0.0, yaw)
            out.append(make_object(cls, p0, v, yaw, rng))
        elif road.parking and rng.random() < 0.6 and cls in ("car", "truck", "bus"):
            side = -1.0 if rng.random() < 0.5 else 1.0
            lat = side * (hw + road.parking / 2 + 0.2)
            yaw = heading + (0.0 if side < 0 else math.pi) + rng.normal(0, 0.04)
            p0, v = at(s, lat, 0.0, yaw)
            out.append(make_object(cls, p0, v, yaw, rng))
        else:  # lot beside the road
            yaw = (
                heading
                + float(rng.choice([0, math.pi / 2, math.pi, -math.pi / 2]))
                + rng.normal(0, 0.1)
            )
            if rng.random() < 0.3:
                yaw = float(rng.uniform(-math.pi, math.pi))
            p0, v = at(s, open_lat(), 0.0, yaw)
            out.append(make_object(cls, p0, v, yaw, rng))
    elif cls in CYCLES:
        if rng.random() < 0.55:
            side = -1.0 if rng.random() < 0.6 else 1.0
            lat = side * (hw - 0.9 + rng.normal(0, 0.1))
            yaw = heading if side < 0 else heading + math.pi
            speed = float(rng.uniform(2.5, 6.0) if cls == "bicycle" else rng.uniform(4.0, 12.0))
            p0, v = at(s, lat, speed, yaw)
        else:
            side = -1.0 if rng.random() < 0.5 else 1.0
            lat = side * (kerb + 0.6) if rng.random() < 0.7 else open_lat()
            yaw = (
                heading + math.pi / 2 + rng.normal(0, 0.2) + (math.pi if rng.random() < 0.5 else 0)
            )
            p0, v = at(s, lat, 0.0, yaw)
        out.append(make_object(cls, p0, v, yaw, rng))
    elif cls == "pedestrian":
        n = int(rng.choice([1, 1, 1, 2, 3]))
        side = -1.0 if rng.random() < 0.5 else 1.0
        on_walk = rng.random() < 0.65
        base_lat = side * float(rng.uniform(kerb + 0.5, walk - 0.6)) if on_walk else open_lat()
        moving = rng.random() < 0.6
        yaw = heading + (0.0 if rng.random() < 0.5 else math.pi)
        if not on_walk:
            yaw = float(rng.uniform(-math.pi, math.pi))
        speed = float(rng.uniform(0.9, 1.7)) if moving else 0.0
        for i in range(n):
            ds = i * 1.0 + rng.normal(0, 0.1)
            dl = rng.normal(0, 0.3) if n > 1 else 0.0
            y = yaw if moving else float(rng.uniform(-math.pi, math.pi))
            p0, v = at(s + ds, base_lat + dl, speed, y)
            out.append(make_object(cls, p0, v, y, rng))
    elif cls in ("barrier", "traffic_cone"):
        n = int(rng.integers(2, 7)) if cls == "barrier" else int(rng.integers(3, 9))
        spacing = (
            (MEAN_SIZE["barrier"][0] + 0.15) if cls == "barrier" else float(rng.uniform(1.2, 3.0))
        )
        where = rng.random()
        side = -1.0 if rng.random() < 0.5 else 1.0
        if construction_lane and where < 0.5:
            lat = 1.0 * (hw - lw + 0.5) if road.lanes_per_dir > 1 else side * (hw - 0.5)
        elif where < 0.8:
            lat = side * (hw + 0.6) if road.parking == 0 else side * (hw + road.parking * 0.5)
        else:
            lat = open_lat()
        for i in range(n):
            yaw = (
                heading + math.pi / 2 + rng.normal(0, 0.05)
                if cls == "barrier"
                else float(rng.uniform(-math.pi, math.pi))
            )
            p0, v = at(s + i * spacing, lat + rng.normal(0, 0.05), 0.0, yaw)
            out.append(make_object(cls, p0, v, yaw, rng))
    return out


def _make_style(rng: np.random.Generator) -> Style:
    az = rng.uniform(-math.pi, math.pi)
    el = rng.uniform(math.radians(15), math.radians(70))
    overcast = rng.random() < 0.35
    tint = rng.uniform(0.92, 1.08, 3)
    return Style(
        sun_dir=np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)]),
        ambient=float(rng.uniform(0.55, 0.75) if overcast else rng.uniform(0.3, 0.5)),
        diffuse=float(rng.uniform(0.2, 0.35) if overcast else rng.uniform(0.5, 0.75)),
        sky_horizon=np.clip(
            np.array([0.80, 0.85, 0.90]) * tint * (0.95 if overcast else 1.0), 0, 1
        ),
        sky_zenith=np.array([0.62, 0.65, 0.70]) * tint
        if overcast
        else np.array([0.30, 0.48, 0.80]) * tint,
        haze=np.clip(np.array([0.75, 0.78, 0.82]) * tint, 0, 1),
        haze_range=float(rng.uniform(120, 500)),
        asphalt=np.array([0.30, 0.30, 0.31]) * rng.uniform(0.7, 1.2) * tint,
        marking=np.array([0.85, 0.85, 0.82]) if rng.random() < 0.7 else np.array([0.85, 0.75, 0.3]),
        sidewalk=np.array([0.58, 0.56, 0.52]) * rng.uniform(0.85, 1.15) * tint,
        verge=(np.array([0.30, 0.42, 0.20]) if rng.random() < 0.6 else np.array([0.50, 0.45, 0.36]))
        * rng.uniform(0.8, 1.2),
        exposure=float(rng.uniform(0.75, 1.2)),
        noise_sigma=float(rng.uniform(1.5, 6.0)),
        jpeg_quality=(55, 92),
    )
