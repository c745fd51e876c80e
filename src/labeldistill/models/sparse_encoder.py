"""SparseEncoder of the CenterPoint LiDAR teacher (mmdet3d "basicblock" variant, METHOD.md 5).

Attribute names mirror the published state dict (METHOD.md 12.1): ``conv_input.{0,1}``,
``encoder_layers.encoder_layer{i}.{j}.{conv1,bn1,conv2,bn2}`` (SparseBasicBlocks),
``encoder_layers.encoder_layer{i}.{last}.{0,1}`` (strided sparse conv + BN), ``conv_out.{0,1}``.
Sparse-conv weights are [kD, kH, kW, in, out] (the published layout).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from labeldistill.config import LidarTeacherConfig
from labeldistill.errors import ConfigError
from labeldistill.ops.sparse_conv import (
    Backend,
    SparseBasicBlock,
    SparseConv3d,
    SparseSequential,
    SparseTensor,
    SubMConv3d,
    conv_output_shape,
)
from labeldistill.ops.voxelize import grid_size

BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def sparse_shape(cfg: LidarTeacherConfig) -> tuple[int, int, int]:
    """Input grid (D, H, W) = (z voxels + 1, y voxels, x voxels), mmdet3d's convention
    (the paper config: [41, 1024, 1024])."""
    nx, ny, nz = grid_size(cfg.point_range, cfg.voxel_size)
    return (nz + 1, ny, nx)


def _padding(p: Any) -> int | tuple[int, int, int]:
    if isinstance(p, (list, tuple)):
        return (int(p[0]), int(p[1]), int(p[2]))
    return int(p)


def _triple(p: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(p, int):
        return (p, p, p)
    return (int(p[0]), int(p[1]), int(p[2]))


def _bn(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class SparseEncoder(nn.Module):
    """Sparse 3D trunk: voxel features -> dense BEV map.

    forward(voxel_features [sum V, C_in], coors [sum V, 4] (b, z, y, x), batch_size)
    -> [B, out_channels * D_out, Y, X]. ``bev_channels``, ``bev_shape`` give the output size.
    """

    def __init__(
        self,
        cfg: LidarTeacherConfig,
        *,
        backend: Backend | None = None,
    ) -> None:
        super().__init__()
        backend = backend or cfg.sparse_backend
        if len(cfg.encoder_channels) != len(cfg.encoder_paddings):
            raise ConfigError(
                "lidar_teacher.encoder_channels and encoder_paddings differ in length: give one "
                "padding per block of every stage"
            )
        self.sparse_shape = sparse_shape(cfg)
        self.conv_input = SparseSequential(
            SubMConv3d(cfg.in_channels, cfg.base_channels, 3, backend=backend, fp32=True),
            _bn(cfg.base_channels),
            nn.ReLU(),
        )
        shape = self.sparse_shape
        in_ch = cfg.base_channels
        layers: dict[str, nn.Module] = {}
        n_stages = len(cfg.encoder_channels)
        for i, (chans, pads) in enumerate(zip(cfg.encoder_channels, cfg.encoder_paddings)):
            if len(chans) != len(pads):
                raise ConfigError(
                    f"lidar_teacher.encoder_channels[{i}] and encoder_paddings[{i}] differ in "
                    "length"
                )
            blocks: list[nn.Module] = []
            for j, (out_ch, pad) in enumerate(zip(chans, pads)):
                if j == len(chans) - 1 and i != n_stages - 1:
                    padding = _padding(pad)
                    blocks.append(
                        SparseSequential(
                            SparseConv3d(in_ch, out_ch, 3, 2, padding, backend=backend),
                            _bn(out_ch),
                            nn.ReLU(),
                        )
                    )
                    shape = conv_output_shape(shape, (3, 3, 3), (2, 2, 2), _triple(padding))
                else:
                    if out_ch != in_ch:
                        raise ConfigError(
                            f"lidar_teacher.encoder_channels[{i}][{j}] = {out_ch}: a basic block "
                            "keeps "
                            f"the {in_ch} channels of its input"
                        )
                    blocks.append(
                        SparseBasicBlock(
                            out_ch, bn_eps=BN_EPS, bn_momentum=BN_MOMENTUM, backend=backend
                        )
                    )
                in_ch = out_ch
            layers[f"encoder_layer{i + 1}"] = SparseSequential(*blocks)
        self.encoder_layers = SparseSequential()
        for name, module in layers.items():
            self.encoder_layers.add_module(name, module)
        self.conv_out = SparseSequential(
            SparseConv3d(in_ch, cfg.encoder_out_channels, (3, 1, 1), (2, 1, 1), 0, backend=backend),
            _bn(cfg.encoder_out_channels),
            nn.ReLU(),
        )
        shape = conv_output_shape(shape, (3, 1, 1), (2, 1, 1), (0, 0, 0))
        if min(shape) <= 0:
            raise ConfigError(
                f"lidar_teacher: sparse grid {self.sparse_shape} shrinks to {shape} in the "
                "encoder: "
                "use a smaller voxel_size[2] (more z voxels) or z-padding 1 in encoder_paddings"
            )
        self.out_shape: tuple[int, int, int] = shape
        self.bev_channels = cfg.encoder_out_channels * shape[0]
        self.bev_shape = (shape[1], shape[2])

    def forward(self, voxel_features: Tensor, coors: Tensor, batch_size: int) -> Tensor:
        """voxel_features [sum V, C_in], coors [sum V, 4] -> BEV [B, C_out * D_out, Y, X].

        Runs in the parameters' dtype (float32) whatever the ambient autocast: the published
        teacher's sparse convolutions (mmcv / spconv) are not autocast ops (METHOD.md 14,
        quirk 29); the dense SECOND / neck after it follow autocast.
        """
        dtype = self.conv_input[1].weight.dtype  # the BN after the first conv
        with torch.autocast(device_type=voxel_features.device.type, enabled=False):
            x = SparseTensor(voxel_features.to(dtype), coors, self.sparse_shape, batch_size)
            x = self.conv_input(x)
            x = self.encoder_layers(x)
            x = self.conv_out(x)
            dense = x.to_dense()  # [B, C, D, Y, X]
        b, c, d, h, w = dense.shape
        return dense.view(b, c * d, h, w)
