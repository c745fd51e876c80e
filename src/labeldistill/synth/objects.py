"""Objects of the synthetic world: the 10 detection classes built from shaded cuboid parts,
and unannotated scenery (buildings, poles, trees).

An object's size follows nuScenes ``(w, l, h)``; its parts are cuboids in its own frame (x along
the heading / length, y along the width, z up, origin at the box centre). Objects move with a
constant velocity along a straight line. Pure functions of the generator passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labeldistill.nuscenes_schema import MOVING_SPEED, attribute_for
from labeldistill.structures import CLASSES

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


@dataclass
class SimObject:
    """One object of the world, moving with constant velocity along a straight line.

    ``parts``: [K, 6] part centres (3, object frame, relative to the box centre) and half sizes
    (3); ``side_rgb``/``top_rgb``: [K, 3] colours in [0, 1]; ``reflectivity``: LiDAR intensity
    scale. ``cls`` is an index into :data:`~labeldistill.structures.CLASSES`, or -1 for
    unannotated scenery (buildings, poles, trees).
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


def pick_colour(
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
        paint = pick_colour(rng, _PAINT, [4, 3, 3, 3, 2, 2, 1, 1, 0.3, 0.3, 0.5, 1])
        body_top = h * rng.uniform(0.48, 0.58)
        pp.add(-hl, hl, -hw, hw, 0.18, body_top, paint)
        front, back = hl * rng.uniform(0.05, 0.35), -hl * rng.uniform(0.55, 0.85)
        pp.add(back, front, -hw * 0.88, hw * 0.88, body_top, h * 0.9, _GLASS, paint)
        pp.add(back + 0.1, front - 0.1, -hw * 0.84, hw * 0.84, h * 0.9, h, paint)
        for ax in (hl * 0.62, -hl * 0.62):
            pp.add(ax - 0.33, ax + 0.33, -hw, hw, 0.0, 0.42, _TYRE)
    elif cls in ("truck", "construction_vehicle"):
        paint = (
            pick_colour(rng, _PAINT, [3, 1, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1])
            if cls == "truck"
            else pick_colour(rng, _PAINT, [1, 0.5, 0.5, 0.5, 0.5, 0.3, 0.3, 0.5, 4, 5, 0.5, 0.3])
        )
        cab_len = rng.uniform(1.8, 2.4)
        cab_h = h * (rng.uniform(0.75, 0.95) if cls == "truck" else rng.uniform(0.8, 1.0))
        pp.add(hl - cab_len, hl, -hw, hw, 0.45, cab_h * 0.62, paint)
        pp.add(hl - cab_len, hl - 0.25, -hw * 0.95, hw * 0.95, cab_h * 0.62, cab_h, _GLASS, paint)
        if cls == "truck":
            cargo = pick_colour(rng, _PAINT, [4, 1, 2, 3, 1, 1, 1, 1, 0.5, 0.5, 1, 1])
            pp.add(-hl, hl - cab_len - 0.15, -hw, hw, 0.6, h, cargo)
        else:
            pp.add(-hl, hl - cab_len - 0.1, -hw, hw, 0.45, h * 0.45, paint)  # chassis / engine
            pp.add(-hl, -hl + 1.0, -hw * 0.9, hw * 0.9, 0.6, h * 0.55, paint * 0.8)  # counterweight
            pp.add(-hl * 0.2, hl, -0.25, 0.25, h * 0.55, h, paint)  # boom / arm
        for ax in (hl * 0.7, -hl * 0.35, -hl * 0.7):
            pp.add(ax - 0.5, ax + 0.5, -hw, hw, 0.0, 0.95, _TYRE)
    elif cls == "bus":
        paint = pick_colour(rng, _PAINT, [3, 0.5, 1, 2, 2, 2, 1, 0.5, 1, 1.5, 0.2, 1])
        pp.add(-hl, hl, -hw, hw, 0.35, h * 0.45, paint)
        pp.add(-hl + 0.3, hl, -hw, hw, h * 0.45, h * 0.85, _GLASS, paint)
        pp.add(-hl, hl, -hw, hw, h * 0.85, h, paint)
        pp.add(-hl, -hl + 0.3, -hw, hw, h * 0.45, h * 0.85, paint)
        for ax in (hl * 0.7, -hl * 0.6):
            pp.add(ax - 0.55, ax + 0.55, -hw, hw, 0.0, 1.0, _TYRE)
    elif cls == "trailer":
        paint = pick_colour(rng, _PAINT, [4, 1, 2, 3, 1, 1.5, 0.5, 1, 0.5, 0.5, 0.5, 1])
        pp.add(-hl, hl, -hw, hw, 1.2, h, paint, paint * 0.9)
        pp.add(hl - 0.8, hl - 0.4, -hw * 0.5, hw * 0.5, 0.0, 1.2, paint * 0.5)  # landing gear
        for ax in (-hl * 0.6, -hl * 0.78):
            pp.add(ax - 0.5, ax + 0.5, -hw, hw, 0.0, 1.0, _TYRE)
    elif cls == "barrier":
        kind = rng.integers(3)
        if kind == 0:  # concrete jersey barrier
            c = pick_colour(rng, _PAINT, [1, 0, 3, 4, 0, 0, 0, 1, 0, 0, 0, 0])
            pp.add(-hl, hl, -hw, hw, 0.0, h * 0.35, c)
            pp.add(-hl * 0.5, hl * 0.5, -hw, hw, h * 0.35, h, c)
        else:  # plastic / striped barrier
            c1 = pick_colour(rng, _PAINT, [4, 0, 0, 0, 3, 0, 0, 0, 3, 2, 0, 0])
            c2 = pick_colour(rng, _PAINT, [3, 0, 1, 1, 2, 0, 0, 0, 1, 1, 0, 0])
            n = 4
            for i in range(n):
                y0 = -hw + i * w / n
                pp.add(-hl * 0.3, hl * 0.3, y0, y0 + w / n, h * 0.55, h, c1 if i % 2 == 0 else c2)
            pp.add(-hl * 0.3, hl * 0.3, -hw, -hw + 0.12, 0.0, h * 0.55, c2)
            pp.add(-hl * 0.3, hl * 0.3, hw - 0.12, hw, 0.0, h * 0.55, c2)
            pp.add(-hl, hl, -hw, -hw + 0.3, 0.0, 0.08, c2 * 0.6)
            pp.add(-hl, hl, hw - 0.3, hw, 0.0, 0.08, c2 * 0.6)
    elif cls == "traffic_cone":
        c = pick_colour(rng, _PAINT, [0.5, 0, 0, 0, 1, 0, 0, 0, 6, 1, 0, 0])
        white = np.array([0.93, 0.93, 0.9])
        pp.add(-hl, hl, -hw, hw, 0.0, 0.06, c * 0.5)
        steps = 4
        for i in range(steps):
            s = 0.8 - 0.55 * i / steps
            z0 = 0.06 + (h - 0.06) * i / steps
            col = white if i == 2 else c
            pp.add(-hl * s, hl * s, -hw * s, hw * s, z0, z0 + (h - 0.06) / steps, col)
    elif cls in CYCLES:
        frame = pick_colour(rng, _PAINT, [2, 3, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1])
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
            cloth = pick_colour(rng, _CLOTH)
            top = h
            pp.add(-0.25, 0.2, -0.2, 0.2, 0.6, 1.0, pick_colour(rng, _CLOTH))
            pp.add(-0.25, 0.15, -0.22, 0.22, 1.0, top - 0.28, cloth)
            head = _SKIN[rng.integers(3)] if rng.random() < 0.5 else pick_colour(rng, _PAINT)
            pp.add(-0.18, 0.05, -0.11, 0.11, top - 0.28, top, head)
        else:
            pp.add(-hl * 0.4, hl * 0.1, -0.1, 0.1, 2 * r * 1.1, h, frame * 0.7)  # saddle post
    elif cls == "pedestrian":
        cloth = pick_colour(rng, _CLOTH)
        legs = pick_colour(rng, _CLOTH)
        hip = h * 0.47
        pp.add(-0.12, 0.12, -0.2, -0.02, 0.0, hip, legs)
        pp.add(-0.12, 0.12, 0.02, 0.2, 0.0, hip, legs)
        pp.add(-0.14, 0.14, -hw, hw, hip, h * 0.84, cloth)
        pp.add(
            -0.11, 0.11, -0.1, 0.1, h * 0.84, h, _SKIN[rng.integers(3)], pick_colour(rng, _CLOTH)
        )
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
    speed = float(np.hypot(*velocity))
    moving = speed > MOVING_SPEED
    parts = _build_parts(cls, size, moving, rng)
    return SimObject(
        cls=CLASSES.index(cls),
        category=category,
        size=size,
        p0=np.asarray(p0, dtype=np.float64),
        velocity=np.asarray(velocity, dtype=np.float64),
        yaw=float(yaw),
        parts=np.asarray(parts.rows, dtype=np.float64),
        side_rgb=np.stack(parts.side),
        top_rgb=np.stack(parts.top),
        reflectivity=float(rng.uniform(15, 90) if cls != "traffic_cone" else rng.uniform(60, 120)),
        attribute=attribute_for(cls, speed),
    )


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
