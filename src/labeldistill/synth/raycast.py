"""Ray casting against the synthetic world, shared by the camera and the LiDAR: the objects as
flat arrays, the slab test of rays against every object part, face normals, and the material
of the ground plane (procedural road texture).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from labeldistill.synth.objects import SimObject
from labeldistill.synth.world import World


@dataclass
class ObjectArrays:
    """The objects of a world as flat arrays (O objects, Q parts in all).

    p0/vel [O, 2], zc [O] centre height, half [O, 3] (l/2, w/2, h/2), yaw [O], refl [O];
    parts [Q, 6] (centre, half size in the object frame), part_obj [Q], part_offset [O],
    part_count [O], side_rgb/top_rgb [Q, 3] float32.
    """

    p0: np.ndarray
    vel: np.ndarray
    zc: np.ndarray
    half: np.ndarray
    yaw: np.ndarray
    refl: np.ndarray
    parts: np.ndarray
    part_offset: np.ndarray
    part_count: np.ndarray
    side_rgb: np.ndarray
    top_rgb: np.ndarray

    @functools.cached_property
    def parts32(self) -> np.ndarray:
        """[Q, 6] parts as float32."""
        return self.parts.astype(np.float32)

    @classmethod
    def of(cls, objects: list[SimObject]) -> ObjectArrays:
        counts = np.array([len(o.parts) for o in objects], dtype=np.int64)
        return cls(
            p0=np.stack([o.p0 for o in objects]),
            vel=np.stack([o.velocity for o in objects]),
            zc=np.array([o.z0 + o.size[2] / 2 for o in objects]),
            half=np.array([[o.size[1] / 2, o.size[0] / 2, o.size[2] / 2] for o in objects]),
            yaw=np.array([o.yaw for o in objects]),
            refl=np.array([o.reflectivity for o in objects]),
            parts=np.concatenate([o.parts for o in objects]),
            part_offset=np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64),
            part_count=counts,
            side_rgb=np.concatenate([o.side_rgb for o in objects]).astype(np.float32),
            top_rgb=np.concatenate([o.top_rgb for o in objects]).astype(np.float32),
        )

    def centers(self, t: float) -> np.ndarray:
        """[O, 3] box centres at time t."""
        xy = self.p0 + self.vel * t
        return np.concatenate([xy, self.zc[:, None]], axis=1)

    def corners(self, t: float) -> np.ndarray:
        """[O, 8, 3] box corners at time t (order of :data:`_CORNER_SIGNS`)."""
        local = _CORNER_SIGNS[None] * self.half[:, None]  # [O, 8, 3]
        c, s = np.cos(self.yaw)[:, None], np.sin(self.yaw)[:, None]
        x = c * local[..., 0] - s * local[..., 1]
        y = s * local[..., 0] + c * local[..., 1]
        return np.stack([x, y, local[..., 2]], -1) + self.centers(t)[:, None]


_CORNER_SIGNS = np.array(
    [
        [1, 1, 1],
        [1, -1, 1],
        [-1, -1, 1],
        [-1, 1, 1],
        [1, 1, -1],
        [1, -1, -1],
        [-1, -1, -1],
        [-1, 1, -1],
    ],
    dtype=np.float64,
)


def object_arrays(world: World) -> ObjectArrays:
    """Flat arrays of the world's objects (cached on the world)."""
    cached = getattr(world, "_arrays", None)
    if cached is None:
        cached = ObjectArrays.of(world.objects)
        world._arrays = cached  # type: ignore[attr-defined]
    return cached


@dataclass
class Hits:
    """Nearest object hits of R rays: ``t`` [R] (inf: no object closer than the limit),
    ``obj`` [R] object index (-1: none), ``part`` [R] global part index, ``face`` [R] 0..5 =
    -x, +x, -y, +y, -z, +z of the object frame; ``footprint`` [O] rays hitting each object
    regardless of occlusion (the limit aside)."""

    t: np.ndarray
    obj: np.ndarray
    part: np.ndarray
    face: np.ndarray
    footprint: np.ndarray


def cast_rays(
    arrays: ObjectArrays,
    t: float,
    origin: np.ndarray,
    dirs: np.ndarray,
    cand_rays: list[np.ndarray],
    cand_objs: list[int],
    t_limit: np.ndarray,
    chunk: int = 400_000,
    count_footprint: bool = True,
) -> Hits:
    """Intersect rays with object parts (slab test in each object's frame), all candidate
    (ray, part) pairs at once.

    origin [3] global; dirs [R, 3] global (any length; t is in units of their length);
    cand_rays[i]: ray indices to test against object cand_objs[i]; t_limit [R] only hits
    nearer than this count (e.g. the ground).
    """
    n_rays = len(dirs)
    best = np.array(t_limit, dtype=np.float64, copy=True)
    obj_out = np.full(n_rays, -1, dtype=np.int64)
    part_out = np.full(n_rays, -1, dtype=np.int64)
    face_out = np.zeros(n_rays, dtype=np.int64)
    footprint = np.zeros(len(arrays.yaw), dtype=np.int64)
    if not cand_rays:
        return Hits(np.where(obj_out >= 0, best, np.inf), obj_out, part_out, face_out, footprint)
    centers = arrays.centers(t)
    cos_y, sin_y = np.cos(arrays.yaw), np.sin(arrays.yaw)
    # group candidates into chunks of about `chunk` (ray, part) pairs
    groups: list[list[int]] = [[]]
    load = 0
    for i, o in enumerate(cand_objs):
        n = len(cand_rays[i]) * int(arrays.part_count[o])
        if load and load + n > chunk:
            groups.append([])
            load = 0
        groups[-1].append(i)
        load += n
    for group in groups:
        ray = np.concatenate([cand_rays[i] for i in group])
        obj = np.repeat(
            np.array([cand_objs[i] for i in group], dtype=np.int64),
            [len(cand_rays[i]) for i in group],
        )
        c, s = cos_y[obj], sin_y[obj]
        o = origin[None] - centers[obj]
        d = dirs[ray]
        ol = np.stack([c * o[:, 0] + s * o[:, 1], -s * o[:, 0] + c * o[:, 1], o[:, 2]], 1).astype(
            np.float32
        )
        dl = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1).astype(
            np.float32
        )
        dl = np.where(np.abs(dl) < 1e-12, np.float32(1e-12), dl)
        inv = np.float32(1.0) / dl
        # pre-test against the whole box (parts are inside it); keep pairs that hit it
        hb = arrays.half[obj].astype(np.float32)
        ta = (-hb - ol) * inv
        tb = (hb - ol) * inv
        tmin = np.minimum(ta, tb)
        tmax = np.maximum(ta, tb)
        near = np.maximum(np.maximum(tmin[:, 0], tmin[:, 1]), tmin[:, 2])
        far = np.minimum(np.minimum(tmax[:, 0], tmax[:, 1]), tmax[:, 2])
        ok = (near <= far) & (far > 1e-3) & (near < t_limit[ray])
        if not ok.any():
            continue
        ray, obj, ol, dl, inv = ray[ok], obj[ok], ol[ok], dl[ok], inv[ok]
        # expand (ray, object) pairs to (ray, part) triplets
        npart = arrays.part_count[obj]
        pair = np.repeat(np.arange(len(ray)), npart)
        start = np.repeat(np.cumsum(npart) - npart, npart)
        part = np.repeat(arrays.part_offset[obj], npart) + (np.arange(len(pair)) - start)
        pc = arrays.parts32[part]
        lo = pc[:, :3] - pc[:, 3:] - ol[pair]
        hi = pc[:, :3] + pc[:, 3:] - ol[pair]
        iv = inv[pair]
        ta = lo * iv
        tb = hi * iv
        tmin = np.minimum(ta, tb)
        tmax = np.maximum(ta, tb)
        near = np.maximum(np.maximum(tmin[:, 0], tmin[:, 1]), tmin[:, 2])
        far = np.minimum(np.minimum(tmax[:, 0], tmax[:, 1]), tmax[:, 2])
        ok = (near <= far) & (near > 1e-3)
        # footprint: (ray, object) pairs with any part hit, ignoring occlusion
        if count_footprint:
            hit_pair = np.zeros(len(ray), dtype=bool)
            hit_pair[pair[ok]] = True
            footprint += np.bincount(obj[hit_pair], minlength=len(footprint))
        ok &= near < t_limit[ray[pair]]
        if not ok.any():
            continue
        sel = np.nonzero(ok)[0]
        r_sel = ray[pair[sel]]
        order = np.lexsort((near[sel], r_sel))
        sel, r_sel = sel[order], r_sel[order]
        first = np.ones(len(sel), dtype=bool)
        first[1:] = r_sel[1:] != r_sel[:-1]
        sel, r_sel = sel[first], r_sel[first]
        better = near[sel] < best[r_sel]
        sel, r_sel = sel[better], r_sel[better]
        nr = near[sel]
        best[r_sel] = nr.astype(np.float64)
        obj_out[r_sel] = obj[pair[sel]]
        part_out[r_sel] = part[sel]
        tm = tmin[sel]
        ax = np.where(tm[:, 0] == nr, 0, np.where(tm[:, 1] == nr, 1, 2))
        positive = dl[pair[sel], ax] < 0  # entering through the + face
        face_out[r_sel] = ax * 2 + positive.astype(np.int64)
    return Hits(np.where(obj_out >= 0, best, np.inf), obj_out, part_out, face_out, footprint)


def face_normals(arrays: ObjectArrays, obj: np.ndarray, face: np.ndarray) -> np.ndarray:
    """[R, 3] global unit normals of hit faces."""
    axis = face // 2
    sign = np.where(face % 2 == 1, 1.0, -1.0)
    n = np.zeros((len(face), 3))
    n[np.arange(len(face)), axis] = sign
    c, s = np.cos(arrays.yaw[obj]), np.sin(arrays.yaw[obj])
    return np.stack([c * n[:, 0] - s * n[:, 1], s * n[:, 0] + c * n[:, 1], n[:, 2]], 1)


# ---------------------------------------------------------------------------------------------
# ground texture
# ---------------------------------------------------------------------------------------------


def ground_material(world: World, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colour [R, 3] (float32) and LiDAR reflectivity [R] of the ground at global xy [R, 2]."""
    road, st = world.road, world.style
    rel = xy - road.origin
    s = rel @ road.direction
    lat = rel @ road.normal
    alat = np.abs(lat)
    hw = road.half_width
    kerb = hw + road.parking
    walk = kerb + road.sidewalk
    tex = world.noise_texture
    n_t = tex.shape[0]
    fine = tex[(s * 12.5).astype(np.int64) % n_t, (lat * 12.5).astype(np.int64) % n_t]
    coarse = tex[(s * 0.6).astype(np.int64) % n_t, (lat * 0.6 + 97).astype(np.int64) % n_t]
    on_road = alat < kerb
    sw = ~on_road & (alat < walk)
    kb = sw & (alat < kerb + 0.2)
    tile = sw & ((np.abs((s % 2.0) - 1.0) > 0.96) | (np.abs(((alat - kerb) % 1.5) - 0.75) > 0.72))
    lw = road.lane_width
    mark = np.abs(alat - 0.12) < 0.07
    for i in range(1, road.lanes_per_dir):
        mark |= (np.abs(alat - i * lw) < 0.07) & ((s % 9.0) < 3.0)
    mark |= np.abs(alat - (hw - 0.15)) < 0.07
    if road.parking:
        mark |= (np.abs(alat - kerb) < 0.3) & ((s % 6.0) < 0.12) & ~sw
    material = np.where(mark, 4, np.where(kb, 3, np.where(sw, 2, np.where(on_road, 1, 0))))
    palette = np.stack([st.verge, st.asphalt, st.sidewalk, st.sidewalk * 1.15, st.marking]).astype(
        np.float32
    )
    refl_of = np.array([12.0, 9.0, 25.0, 25.0, 90.0], dtype=np.float32)
    variation = (1.0 + 0.10 * fine + 0.08 * coarse) * np.where(tile, 0.8, 1.0).astype(np.float32)
    rgb = palette[material] * variation[:, None]
    refl = refl_of[material] * (1.0 + 0.2 * fine)
    return rgb, refl
