"""Image-view (ida) and BEV (bda) augmentation: parameter sampling, 4x4 matrices, application.

Pure functions (METHOD.md 3.3, 3.4). Randomness comes from a caller-supplied
``numpy.random.Generator``; nothing here touches global RNG state.

ida: one resize / crop / flip / rotate per camera, shared by all key frames of that camera.
``ida_matrix`` maps an original-image pixel ``(u, v)`` to the augmented-image pixel.

bda: one rotation / scale / flip per sample, applied to GT boxes and LiDAR points here and to
the frustum points by the model (images are never changed by bda).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from labeldistill.config import DataConfig
from labeldistill.geometry import rotz

#: Source width the resize limits of :class:`~labeldistill.config.ImageAugConfig` refer to.
REFERENCE_WIDTH = 1600


@dataclass(frozen=True)
class IdaParams:
    """Image-view augmentation of one camera.

    resize:      scale factor r applied to the source image.
    resize_dims: (width, height) after resizing = (int(src_w * r), int(src_h * r)).
    crop:        (x0, y0, x1, y1) in the resized image; x1 - x0 = W, y1 - y0 = H (network input);
                 regions outside the resized image are zero-filled.
    flip:        left-right flip after cropping.
    rotate:      rotation in degrees, counter-clockwise on screen, about the crop centre.
    """

    resize: float
    resize_dims: tuple[int, int]
    crop: tuple[int, int, int, int]
    flip: bool
    rotate: float

    @property
    def out_size(self) -> tuple[int, int]:
        """Output (width, height) = (W, H)."""
        return self.crop[2] - self.crop[0], self.crop[3] - self.crop[1]


@dataclass(frozen=True)
class BdaParams:
    """BEV augmentation of one sample: rotation (degrees, about +z), scale, axis flips."""

    rotate: float = 0.0
    scale: float = 1.0
    flip_dx: bool = False
    flip_dy: bool = False


# --------------------------------------------------------------------------------------------
# ida
# --------------------------------------------------------------------------------------------


def sample_ida(
    rng: np.random.Generator, cfg: DataConfig, src_w: int, src_h: int, train: bool
) -> IdaParams:
    """Sample (``train=True``) or fix (``train=False``) the ida of one camera.

    Training (METHOD.md 3.3): r ~ U(resize_lim) * 1600 / src_w; bottom crop
    y0 = int((1 - U(bot_pct_lim)) * newH) - H; x0 = int(U(0, max(0, newW - W)));
    flip with p = 0.5 if ``rand_flip``; rotation ~ U(rot_lim) degrees.
    Testing: r = max(H / src_h, W / src_w); y0 = int((1 - mean(bot_pct_lim)) * newH) - H
    (= newH - H by default); x0 = int(max(0, newW - W) / 2); no flip, no rotation.
    The generator is always consumed in the same order (resize, crop y, crop x, flip, rotate).
    """
    out_h, out_w = cfg.image_size
    aug = cfg.ida_aug
    if train:
        resize = float(rng.uniform(*aug.resize_lim)) * REFERENCE_WIDTH / src_w
        new_w, new_h = int(src_w * resize), int(src_h * resize)
        y0 = int((1.0 - float(rng.uniform(*aug.bot_pct_lim))) * new_h) - out_h
        x0 = int(rng.uniform(0.0, max(0, new_w - out_w)))
        flip_draw = float(rng.uniform())
        flip = bool(aug.rand_flip and flip_draw < 0.5)
        rotate = float(rng.uniform(*aug.rot_lim))
    else:
        resize = max(out_h / src_h, out_w / src_w)
        new_w, new_h = int(src_w * resize), int(src_h * resize)
        y0 = int((1.0 - float(np.mean(aug.bot_pct_lim))) * new_h) - out_h
        x0 = int(max(0, new_w - out_w) / 2)
        flip = False
        rotate = 0.0
    return IdaParams(
        resize=resize,
        resize_dims=(new_w, new_h),
        crop=(x0, y0, x0 + out_w, y0 + out_h),
        flip=flip,
        rotate=rotate,
    )


def _ida_affine(params: IdaParams) -> tuple[np.ndarray, np.ndarray]:
    """The 2x2 linear part A and translation t of the ida map (float64)."""
    out_w, out_h = params.out_size
    a = params.resize * np.eye(2)
    t = -np.array(params.crop[:2], dtype=np.float64)
    if params.flip:
        f = np.array([[-1.0, 0.0], [0.0, 1.0]])
        a = f @ a
        t = f @ t + np.array([out_w, 0.0])
    theta = params.rotate / 180.0 * math.pi
    rot = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
    centre = np.array([out_w / 2.0, out_h / 2.0])
    a = rot @ a
    t = rot @ t + centre - rot @ centre
    return a, t


def ida_matrix(params: IdaParams) -> np.ndarray:
    """4x4 (float64) mapping original pixel (u, v, ., 1) -> augmented pixel (METHOD.md 3.3).

    A = r I; t = -(x0, y0); flip: A <- F A, t <- F t + (W, 0), F = diag(-1, 1); rotation
    R = [[cos, sin], [-sin, cos]] about c = (W/2, H/2): A <- R A, t <- R t + c - R c.
    A fills the top-left 2x2, t rows 0-1 of column 3; rows 2-3 are those of the identity.
    """
    a, t = _ida_affine(params)
    m = np.eye(4)
    m[:2, :2] = a
    m[:2, 3] = t
    return m


def apply_ida_image(img, params: IdaParams, fast: bool = True):
    """Resize (Pillow default filter), crop (zero fill outside), flip, rotate (nearest, about
    the centre, counter-clockwise, no expand). PIL image in, PIL image of size (W, H) out.

    ``fast=False`` is the original order: resize the whole image, then crop. ``fast=True``
    (default) resamples only the part of the resized image the crop keeps (Pillow's ``box``
    argument, same sampling grid and filter support), about 2x faster; Pillow's intermediate
    rounding makes a few pixels (< 0.1 %) differ by one grey level.
    """
    if fast:
        new_w, new_h = params.resize_dims
        sx, sy = img.width / new_w, img.height / new_h
        x0, y0, x1, y1 = params.crop
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, new_w), min(y1, new_h)
        if cx1 > cx0 and cy1 > cy0:
            box = (cx0 * sx, cy0 * sy, cx1 * sx, cy1 * sy)
            part = img.resize((cx1 - cx0, cy1 - cy0), box=box)
        else:
            part = None
        if part is None or (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            canvas = Image.new(img.mode, (x1 - x0, y1 - y0))
            if part is not None:
                canvas.paste(part, (cx0 - x0, cy0 - y0))
            part = canvas
        img = part
    else:
        img = img.resize(params.resize_dims)
        img = img.crop(params.crop)
    if params.flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if params.rotate != 0.0:
        img = img.rotate(params.rotate)
    return img


def apply_ida_points(uv: np.ndarray, params: IdaParams) -> np.ndarray:
    """Original pixels [P, 2] (u, v) -> augmented pixels [P, 2] (float64)."""
    a, t = _ida_affine(params)
    return np.asarray(uv, dtype=np.float64) @ a.T + t


# --------------------------------------------------------------------------------------------
# bda
# --------------------------------------------------------------------------------------------


def sample_bda(rng: np.random.Generator, cfg: DataConfig, train: bool) -> BdaParams:
    """Sample (``train=True``) the bda of one sample, or the identity (``train=False``).

    rotation ~ U(rot_lim) degrees, scale ~ U(scale_lim), flip_dx with p = flip_dx_ratio,
    flip_dy with p = flip_dy_ratio (METHOD.md 3.3).
    """
    if not train:
        return BdaParams()
    aug = cfg.bda_aug
    rotate = float(rng.uniform(*aug.rot_lim))
    scale = float(rng.uniform(*aug.scale_lim))
    flip_dx = bool(rng.uniform() < aug.flip_dx_ratio)
    flip_dy = bool(rng.uniform() < aug.flip_dy_ratio)
    return BdaParams(rotate=rotate, scale=scale, flip_dx=flip_dx, flip_dy=flip_dy)


def bda_matrix(params: BdaParams) -> np.ndarray:
    """4x4 (float64) with M = Flip . (s I3) . Rz(alpha) in the top-left 3x3."""
    alpha = params.rotate / 180.0 * math.pi
    rz = rotz(alpha)
    flip = np.diag([-1.0 if params.flip_dx else 1.0, -1.0 if params.flip_dy else 1.0, 1.0])
    m = np.eye(4)
    m[:3, :3] = flip @ (params.scale * np.eye(3)) @ rz
    return m


def apply_bda_boxes(boxes: np.ndarray, params: BdaParams) -> np.ndarray:
    """Boxes [M, 9] (x, y, z, l, w, h, yaw, vx, vy) -> augmented boxes [M, 9] (new array).

    centre <- M centre (z scaled too); sizes <- s * sizes; yaw <- yaw + alpha, then
    pi - yaw if flip_dx, -yaw if flip_dy (yaw is not wrapped, as the original);
    velocity <- M[:2, :2] v.
    """
    out = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, boxes.shape[-1])
    m = bda_matrix(params)[:3, :3]
    out[:, :3] = out[:, :3] @ m.T
    out[:, 3:6] *= params.scale
    out[:, 6] += params.rotate / 180.0 * math.pi
    if params.flip_dx:
        out[:, 6] = math.pi - out[:, 6]
    if params.flip_dy:
        out[:, 6] = -out[:, 6]
    if out.shape[1] >= 9:
        out[:, 7:9] = out[:, 7:9] @ m[:2, :2].T
    return out


def apply_bda_points(points: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """Points [P, >=2] -> new array with (x, y) <- M[:2, :2] (x, y) (METHOD.md 3.4 step 4).

    z, intensity and time lag are unchanged (quirk 18: the bda scale is not applied to z).
    """
    out = np.array(points, copy=True)
    m = np.asarray(mat, dtype=np.float64)[:2, :2]
    out[:, :2] = (out[:, :2].astype(np.float64) @ m.T).astype(out.dtype)
    return out
