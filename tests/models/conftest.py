"""Shared pieces of the model tests: a tiny student config, its BEV grid and a camera rig of
``n`` cameras around the car looking outwards (fixtures, so no test imports another)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from labeldistill.config import (
    BevEncoderConfig,
    DepthNetConfig,
    GridConfig,
    ImageBackboneConfig,
    ImageNeckConfig,
    StudentConfig,
    ViewTransformConfig,
)


def _tiny_student_config(pool_impl: str = "fast") -> StudentConfig:
    return StudentConfig(
        image_backbone=ImageBackboneConfig(depth=18, pretrained=False),
        image_neck=ImageNeckConfig(out_channels=(8, 8, 8, 8)),
        depth_net=DepthNetConfig(mid_channels=16, dcn_groups=4),
        view_transform=ViewTransformConfig(context_channels=6, pool_impl=pool_impl),
        bev_encoder=BevEncoderConfig(base_channels=8, neck_out_channels=(8, 8, 8, 8)),
    )


def _camera_inputs(
    b: int, f: int, n: int, size: tuple[int, int] = (32, 96)
) -> tuple[torch.Tensor, ...]:
    """(imgs [B, F, N, 3, H, W], ego_from_camera, intrinsics, ida [B, F, N, 4, 4], bda [B, 4, 4])
    of ``n`` cameras around the car looking outwards; previous frames: ego moved 3 m."""
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randn(b, f, n, 3, *size, generator=gen)
    e = torch.eye(4).repeat(b, f, n, 1, 1)
    for cam in range(n):
        yaw = 2 * math.pi * cam / n
        c, s = math.cos(yaw), math.sin(yaw)
        fwd = torch.tensor([c, s, 0.0])
        right = torch.tensor([s, -c, 0.0])
        down = torch.tensor([0.0, 0.0, -1.0])
        e[:, :, cam, :3, :3] = torch.stack([right, down, fwd], dim=1)
        e[:, :, cam, :3, 3] = torch.tensor([1.0, 0.0, 1.6])
    e[:, 1:, :, 0, 3] -= 3.0
    k = torch.eye(4).repeat(b, f, n, 1, 1)
    k[..., 0, 0] = k[..., 1, 1] = 80.0
    k[..., 0, 2], k[..., 1, 2] = size[1] / 2, size[0] / 2
    ida = torch.eye(4).repeat(b, f, n, 1, 1)
    bda = torch.eye(4).repeat(b, 1, 1)
    return imgs, e, k, ida, bda


@pytest.fixture
def tiny_student_config() -> Callable[..., StudentConfig]:
    """Factory: ``tiny_student_config(pool_impl="fast")`` -> a StudentConfig of a few channels."""
    return _tiny_student_config


@pytest.fixture
def tiny_grid() -> GridConfig:
    """32 x 32 BEV cells of 1.6 m, 16 depth bins of 2 m."""
    return GridConfig(
        x_bound=(-25.6, 25.6, 1.6), y_bound=(-25.6, 25.6, 1.6), d_bound=(2.0, 34.0, 2.0)
    )


@pytest.fixture
def camera_inputs() -> Callable[..., tuple[torch.Tensor, ...]]:
    """Factory: ``camera_inputs(b, f, n, size=(32, 96))`` (see :func:`_camera_inputs`)."""
    return _camera_inputs
