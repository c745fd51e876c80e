"""Lift-splat view transform and the student's image-to-BEV backbone (METHOD.md 4.1-4.4).

:class:`LSSBackbone` is the published ``BaseLSSFPN``: its attribute names (``img_backbone``,
``img_neck``, ``depth_net`` and the persistent buffers ``voxel_size``, ``voxel_coord``,
``voxel_num``, ``frustum``) give the ``backbone.*`` keys of METHOD.md 12.1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from labeldistill.config import GridConfig, StudentConfig
from labeldistill.errors import ConfigError
from labeldistill.models.depth_net import DepthNet, camera_vector
from labeldistill.models.image_backbone import ResNetBackbone, build_image_neck
from labeldistill.ops.inverse import inverse_4x4
from labeldistill.ops.voxel_pool import VoxelGrid, pool_fn, voxel_pool_scatter


def depth_bins(d_bound: tuple[float, float, float]) -> Tensor:
    """Lower edges of the D depth bins: d_min, d_min + step, ... (< d_max) -> [D] float32."""
    d_min, d_max, step = d_bound
    n = round((d_max - d_min) / step)
    return d_min + step * torch.arange(n, dtype=torch.float32)


def make_frustum(
    image_size: tuple[int, int], downsample: int, d_bound: tuple[float, float, float]
) -> Tensor:
    """Frustum points in augmented-image coordinates -> [D, h, w, 4] of (u, v, d, 1).

    u = linspace(0, W - 1, w), v = linspace(0, H - 1, h), d = bin lower edges; h = H // ds,
    w = W // ds.
    """
    height, width = image_size
    h, w = height // downsample, width // downsample
    d = depth_bins(d_bound)
    u = torch.linspace(0, width - 1, w, dtype=torch.float32)
    v = torch.linspace(0, height - 1, h, dtype=torch.float32)
    dd, vv, uu = torch.meshgrid(d, v, u, indexing="ij")
    return torch.stack([uu, vv, dd, torch.ones_like(dd)], dim=-1)


#: Geometry precisions (``student.view_transform.geometry_precision``, METHOD.md 14 quirk 28).
GEOMETRY_PRECISIONS = ("fp16_faithful", "fp32")

#: Where the faithful mode puts a frustum point whose fp16 geometry overflowed: far below
#: every grid, so that the pooling drops it (finite, so that ``.int()`` is defined everywhere,
#: ONNX included).
DROPPED_POINT = -1.0e6


def _fp16(x: Tensor) -> Tensor:
    """Round fp32 values to the nearest fp16 (|x| >= 65520 -> +-inf), kept in fp32."""
    return x.to(torch.float16).to(torch.float32)


def frustum_geometry(
    frustum: Tensor,
    ego_from_camera: Tensor,
    intrinsics: Tensor,
    ida: Tensor,
    bda: Tensor,
    precision: str = "fp32",
    inverse=torch.inverse,
) -> Tensor:
    """Ego-frame position of every frustum point (METHOD.md 4.3).

    frustum [D, h, w, 4]; ego_from_camera, intrinsics, ida [B, N, 4, 4]; bda [B, 4, 4]
    -> [B, N, D, h, w, 3] float32: p = ida^-1 (u, v, d, 1); p = (p_u p_d, p_v p_d, p_d, 1);
    p = bda ego_from_camera intrinsics^-1 p.

    The ambient autocast never applies (the geometry is never computed in bf16 or fp16 by
    accident). ``precision``:

    * ``"fp32"``: every step in float32.
    * ``"fp16_faithful"``: what the published model computes under 16-mixed autocast, emulated
      explicitly in float32 ops so that CPU, fp32, ONNX and GPU runs agree: the inputs and the
      output of every matmul and of the ``p_u p_d`` / ``p_v p_d`` products are rounded to fp16
      (the inverses are fp32, as there). Where ``u_orig * d`` exceeds the fp16 range the point
      becomes non-finite; such points are moved to :data:`DROPPED_POINT` (out of every grid), so
      the pooling drops them (quirk 28).
    """
    if precision not in GEOMETRY_PRECISIONS:
        raise ValueError(
            f"geometry precision must be one of {GEOMETRY_PRECISIONS}, got {precision!r}"
        )
    faithful = precision == "fp16_faithful"
    r = _fp16 if faithful else (lambda x: x)
    b, n = ida.shape[:2]
    f32 = torch.float32
    with torch.autocast(device_type=frustum.device.type, enabled=False):
        pts = r(frustum.to(f32)).view(1, 1, *frustum.shape, 1)  # [1, 1, D, h, w, 4, 1]
        ida_inv = r(inverse(ida.to(f32))).view(b, n, 1, 1, 1, 4, 4)
        pts = r(ida_inv @ pts)
        pts = torch.cat([r(pts[..., :2, :] * pts[..., 2:3, :]), pts[..., 2:, :]], dim=-2)
        combine = r(r(ego_from_camera.to(f32)) @ r(inverse(intrinsics.to(f32))))
        pts = r(combine.view(b, n, 1, 1, 1, 4, 4) @ pts)
        pts = r(r(bda.to(f32)).view(b, 1, 1, 1, 1, 4, 4) @ pts)
        xyz = pts[..., :3, 0]
        if faithful:
            finite = torch.isfinite(xyz).all(dim=-1, keepdim=True)
            xyz = torch.where(finite, xyz, torch.full_like(xyz, DROPPED_POINT))
    return xyz


@dataclass
class LSSOutput:
    """bev: [B, F*C, Y, X] BEV features of all frames in order [t, t-1, ...];
    depth: [B*N, D, h, w] key-frame depth probabilities (softmax)."""

    bev: Tensor
    depth: Tensor


class LSSBackbone(nn.Module):
    """Image backbone + neck + DepthNet + lift-splat for F key frames (``BaseLSSFPN``).

    forward(imgs [B, F, N, 3, H, W], ego_from_camera / intrinsics / ida [B, F, N, 4, 4],
    bda [B, 4, 4]) -> :class:`LSSOutput`. Frame 0 runs with gradients; frames 1.. under
    ``torch.no_grad()`` with their own matrices and the shared bda. DepthNet is conditioned on
    frame-0 matrices for every frame (METHOD.md 14, quirk 20).

    ``exportable``: the same network with standard-ONNX ops (scatter pooling, the closed-form
    4x4 inverse, the plain deformable conv); the state dict is the same.
    """

    def __init__(
        self,
        cfg: StudentConfig,
        grid: GridConfig,
        image_size: tuple[int, int],
        *,
        exportable: bool = False,
    ) -> None:
        super().__init__()
        self.exportable = exportable
        vt = cfg.view_transform
        self.image_size = (int(image_size[0]), int(image_size[1]))
        multiple = max(vt.downsample, 32)  # C5 has stride 32 and is upsampled x2 by the neck
        if self.image_size[0] % multiple or self.image_size[1] % multiple:
            raise ConfigError(
                f"data.image_size {list(self.image_size)} must be a multiple of {multiple} in both "
                "dimensions (ResNet C5 stride 32): e.g. [256, 704]"
            )
        self.downsample = vt.downsample
        self.context_channels = vt.context_channels
        self.depth_channels = grid.num_depth_bins
        self.pool = voxel_pool_scatter if exportable else pool_fn(vt.pool_impl)
        self.inverse = inverse_4x4 if exportable else torch.inverse
        if vt.geometry_precision not in GEOMETRY_PRECISIONS:
            raise ConfigError(
                f"student.view_transform.geometry_precision {vt.geometry_precision!r}: use one of "
                f"{', '.join(GEOMETRY_PRECISIONS)}"
            )
        self.geometry_precision = vt.geometry_precision
        self.grid = VoxelGrid.from_config(grid)
        bounds = (grid.x_bound, grid.y_bound, grid.z_bound)
        self.register_buffer("voxel_size", torch.tensor([b[2] for b in bounds]))
        self.register_buffer("voxel_coord", torch.tensor([b[0] + b[2] / 2.0 for b in bounds]))
        self.register_buffer("voxel_num", torch.tensor(self.grid.size, dtype=torch.int64))
        self.register_buffer("frustum", make_frustum(self.image_size, vt.downsample, grid.d_bound))
        self.img_backbone = ResNetBackbone(cfg.image_backbone)
        self.img_neck = build_image_neck(cfg.image_neck, self.img_backbone.out_channels)
        self.depth_net = DepthNet(
            cfg.depth_net,
            self.img_neck.out_channels,
            vt.context_channels,
            self.depth_channels,
            exportable=exportable,
        )

    def _frame(
        self, imgs: Tensor, mats: tuple[Tensor, Tensor, Tensor], bda: Tensor, cam: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One frame: imgs [B, N, 3, H, W] -> (BEV [B, C, Y, X], depth probs [B*N, D, h, w])."""
        b, n = imgs.shape[:2]
        feats = self.img_neck(self.img_backbone(imgs.flatten(0, 1)))
        out = self.depth_net(feats, cam)
        # softmax in float32 whatever the autocast: CUDA autocast runs softmax in fp32, CPU bf16
        # autocast does not, and bf16 probabilities round to exactly 1.0 / 0.0, where the depth
        # loss's log is clamped and its gradient vanishes (found with a bench student whose
        # depth loss diverged under bf16; benchmarks/RESULTS.md, 2026-12-04)
        depth = out.depth_logits.float().softmax(dim=1)
        geom = frustum_geometry(
            self.frustum, *mats, bda, precision=self.geometry_precision, inverse=self.inverse
        )
        h, w = depth.shape[2:]
        bev = self.pool(
            geom,
            depth.view(b, n, self.depth_channels, h, w),
            out.context.view(b, n, self.context_channels, h, w),
            self.grid,
        )
        return bev, depth

    def forward(
        self, imgs: Tensor, ego_from_camera: Tensor, intrinsics: Tensor, ida: Tensor, bda: Tensor
    ) -> LSSOutput:
        if imgs.dim() != 6 or tuple(imgs.shape[-2:]) != self.image_size:
            raise ValueError(
                f"images must be [B, F, N, 3, {self.image_size[0]}, {self.image_size[1]}], "
                f"got {tuple(imgs.shape)}"
            )
        cam = camera_vector(ego_from_camera[:, 0], intrinsics[:, 0], ida[:, 0], bda)
        bevs = []
        depth = None
        for f in range(imgs.shape[1]):
            mats = (ego_from_camera[:, f], intrinsics[:, f], ida[:, f])
            if f == 0:
                bev, depth = self._frame(imgs[:, f], mats, bda, cam)
            else:
                with torch.no_grad():
                    bev, _ = self._frame(imgs[:, f], mats, bda, cam)
            bevs.append(bev)
        assert depth is not None
        return LSSOutput(bev=torch.cat(bevs, dim=1), depth=depth)
