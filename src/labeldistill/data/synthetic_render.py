"""Sensors of the synthetic world: a z-buffered ray-casting camera renderer and a 32-beam
spinning LiDAR, both intersecting the same cuboid parts and ground plane (``synthetic_world``).

Camera: one ray per pixel; the ground plane (z = 0, procedural road texture), sky, and every
object part (slab test in the object's frame) are intersected; the nearest hit wins (z-buffer
on the camera depth). Lambert shading with a per-scene sun, distance haze, exposure, Gaussian
sensor noise. LiDAR: the same intersections for a fixed pattern of beams, with range noise,
dropout and an intensity model.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from labeldistill.data.synthetic_world import (
    LIDAR_TRANSLATION,
    LIDAR_YAW,
    SimObject,
    World,
    rotz,
)


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
_BOX_EDGES = np.array(
    [[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4], [0, 4], [1, 5], [2, 6], [3, 7]]
)


def object_arrays(world: World) -> ObjectArrays:
    """Flat arrays of the world's objects (cached on the world)."""
    cached = getattr(world, "_arrays", None)
    if cached is None:
        cached = ObjectArrays.of(world.objects)
        world._arrays = cached  # type: ignore[attr-defined]
    return cached


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


# ---------------------------------------------------------------------------------------------
# camera
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# LiDAR
# ---------------------------------------------------------------------------------------------

LIDAR_BEAMS = 32
LIDAR_ELEVATION = (-30.0, 10.0)  # degrees
LIDAR_MAX_RANGE = 70.0
LIDAR_MIN_RANGE = 1.0


def ego_from_lidar() -> np.ndarray:
    """4x4 ego_from_lidar of the synthetic rig."""
    m = np.eye(4)
    m[:3, :3] = rotz(LIDAR_YAW)
    m[:3, 3] = LIDAR_TRANSLATION
    return m


@functools.lru_cache(maxsize=4)
def lidar_directions(azimuth_steps: int) -> np.ndarray:
    """Unit beam directions in the LiDAR frame, [B=32, A, 3] (beam-major)."""
    el = np.radians(np.linspace(*LIDAR_ELEVATION, LIDAR_BEAMS))
    az = np.arange(azimuth_steps) * (2 * math.pi / azimuth_steps)
    ce = np.cos(el)[:, None]
    return np.stack(
        [
            ce * np.cos(az)[None],
            ce * np.sin(az)[None],
            np.sin(el)[:, None] * np.ones_like(az)[None],
        ],
        -1,
    )


def scan_lidar(world: World, t: float, azimuth_steps: int, rng: np.random.Generator) -> np.ndarray:
    """Ray-cast one LiDAR sweep at time t -> points [P, 5] float32 (x, y, z, intensity, ring) in
    the LiDAR frame, ordered by azimuth column then beam."""
    global_from_lidar = world.ego_pose(t) @ ego_from_lidar()
    rot = global_from_lidar[:3, :3]
    origin = global_from_lidar[:3, 3]
    dirs_l = lidar_directions(azimuth_steps)  # [B, A, 3]
    n_b = dirs_l.shape[0]
    dirs = dirs_l.reshape(-1, 3) @ rot.T  # global, unit
    n = len(dirs)
    t_hit = np.full(n, np.inf)
    obj_id = np.full(n, -1, dtype=np.int64)
    normal = np.zeros((n, 3))
    refl = np.zeros(n)
    down = dirs[:, 2] < -1e-6
    tg = np.where(down, -origin[2] / np.where(down, dirs[:, 2], -1.0), np.inf)
    t_hit[:] = np.where(tg <= LIDAR_MAX_RANGE + 1.0, tg, np.inf)
    g = np.isfinite(t_hit)
    _, refl[g] = ground_material(world, origin[:2] + dirs[g, :2] * t_hit[g, None])
    normal[g] = (0.0, 0.0, 1.0)
    lidar_from_global = np.linalg.inv(global_from_lidar)
    step = 2 * math.pi / azimuth_steps
    beams = np.arange(n_b)
    beam_el = np.radians(np.linspace(*LIDAR_ELEVATION, LIDAR_BEAMS))
    el_step = float(beam_el[1] - beam_el[0])
    arrays = object_arrays(world)
    corners = (
        arrays.corners(t) @ lidar_from_global[:3, :3].T + lidar_from_global[:3, 3]
    )  # [O, 8, 3]
    cl = corners.mean(1)
    rng_xy = np.hypot(cl[:, 0], cl[:, 1])
    radius = np.hypot(arrays.half[:, 0], arrays.half[:, 1])
    cand_rays: list[np.ndarray] = []
    cand_objs: list[int] = []
    for i in np.nonzero(rng_xy - radius <= LIDAR_MAX_RANGE)[0]:
        rows = beams
        if rng_xy[i] <= radius[i] + 0.1:
            cols = np.arange(azimuth_steps)
        else:
            a_c = math.atan2(cl[i, 1], cl[i, 0])
            rel = (np.arctan2(corners[i, :, 1], corners[i, :, 0]) - a_c + math.pi) % (
                2 * math.pi
            ) - math.pi
            j0 = int(math.floor((a_c + rel.min()) / step)) - 1
            j1 = int(math.ceil((a_c + rel.max()) / step)) + 1
            cols = np.arange(j0, j1 + 1) % azimuth_steps
            if rng_xy[i] > radius[i] + 0.5:
                el = np.arctan2(corners[i, :, 2], np.hypot(corners[i, :, 0], corners[i, :, 1]))
                rows = beams[(beam_el >= el.min() - el_step) & (beam_el <= el.max() + el_step)]
                if len(rows) == 0:
                    continue
        cand_rays.append((rows[:, None] * azimuth_steps + cols[None]).ravel())
        cand_objs.append(int(i))
    hits = cast_rays(arrays, t, origin, dirs, cand_rays, cand_objs, t_hit, count_footprint=False)
    h_idx = np.nonzero(hits.obj >= 0)[0]
    t_hit[h_idx] = hits.t[h_idx]
    obj_id[h_idx] = hits.obj[h_idx]
    normal[h_idx] = face_normals(arrays, hits.obj[h_idx], hits.face[h_idx])
    refl[h_idx] = arrays.refl[hits.obj[h_idx]]
    valid = np.isfinite(t_hit) & (t_hit >= LIDAR_MIN_RANGE) & (t_hit <= LIDAR_MAX_RANGE)
    t_hit = np.where(valid, t_hit, 0.0)
    cos_inc = np.abs(np.sum(normal * dirs, axis=1))
    p_drop = 0.03 + 0.5 * (cos_inc < 0.08) + 0.25 * (t_hit / LIDAR_MAX_RANGE) ** 2 * (refl < 20)
    keep = valid & (rng.random(n) >= p_drop)
    rng_noisy = t_hit + rng.normal(0.0, 0.02, n)
    intensity = np.clip(refl * (0.35 + 0.65 * cos_inc) + rng.normal(0.0, 2.0, n), 0.0, 255.0)
    ring = np.repeat(beams, azimuth_steps).astype(np.float64)
    # column-major order (azimuth, then beam), like a spinning sensor
    order = np.arange(n).reshape(n_b, azimuth_steps).T.ravel()
    order = order[keep[order]]
    pts = dirs_l.reshape(-1, 3)[order] * rng_noisy[order, None]
    out = np.concatenate([pts, intensity[order, None], ring[order, None]], axis=1)
    return out.astype(np.float32)


def points_in_boxes_exact(
    points_global: np.ndarray, boxes: list[tuple[np.ndarray, np.ndarray, np.ndarray]], margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """Membership of points in boxes, with an ambiguity band.

    points_global [P, 3] float64; boxes: (centre [3], size (w, l, h) [3], rotation 3x3).
    Returns (inside [M, P] bool: strictly inside by more than ``margin``, ambiguous [P] bool:
    within ``margin`` of some box's surface while not clearly outside).
    """
    inside = np.zeros((len(boxes), len(points_global)), dtype=bool)
    ambiguous = np.zeros(len(points_global), dtype=bool)
    for m, (c, size, r) in enumerate(boxes):
        half = np.array([size[1], size[0], size[2]]) / 2.0
        rough = np.all(np.abs(points_global - c) <= np.linalg.norm(half) + 1.0, axis=1)
        idx = np.nonzero(rough)[0]
        if len(idx) == 0:
            continue
        local = np.abs((points_global[idx] - c) @ r)
        within = np.all(local <= half + margin, axis=1)
        strictly = np.all(local < half - margin, axis=1)
        inside[m, idx[strictly]] = True
        ambiguous[idx[within & ~strictly]] = True
    return inside, ambiguous
