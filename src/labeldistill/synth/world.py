"""The 3D world of one synthetic scene: a straight road, the ego vehicle driving along it, and
the objects (:mod:`labeldistill.synth.objects`) placed around it without overlaps.

Everything here is a pure function of a seed, so the renderer, the LiDAR ray caster and the
table writer all see the same world. Coordinates: global frame, metres, z up, ground plane
z = 0; time ``t`` in seconds from the first key sample of the scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from labeldistill.geometry import rotz
from labeldistill.structures import CLASSES
from labeldistill.synth.objects import (
    CLASS_FREQ,
    CYCLES,
    MEAN_SIZE,
    VEHICLES,
    SimObject,
    make_object,
    make_scenery,
    pick_colour,
)

SWEEP_DT_US = 50_000  # 20 Hz LiDAR
KEY_DT_US = 500_000  # 2 Hz key samples
SWEEPS_PER_KEY = KEY_DT_US // SWEEP_DT_US
EXTRA_SWEEPS = 5  # sweeps before the first / after the last key frame (the 10-sweep teacher)

EGO_SIZE = (1.90, 4.70)  # (w, l) of the ego car; its box centre is EGO_CENTER_X ahead of the origin
EGO_CENTER_X = 1.35


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
            rgb = pick_colour(
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
        ci = CLASSES.index(cls)
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
