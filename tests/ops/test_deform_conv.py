"""The plain deformable convolution equals torchvision's."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import deform_conv2d

from labeldistill.ops.deform_conv import deform_conv2d_plain


@pytest.mark.parametrize("groups", [1, 4])
def test_plain_deform_conv_equals_torchvision(groups: int) -> None:
    g = torch.Generator().manual_seed(groups)
    x = torch.randn(2, 8, 7, 11, generator=g)
    # offsets up to +-4 px: many taps sample partly or wholly outside the image
    offset = (torch.rand(2, 18, 7, 11, generator=g) - 0.5) * 8
    weight = torch.randn(12, 8 // groups, 3, 3, generator=g) * 0.3
    ref = deform_conv2d(x, offset, weight, padding=(1, 1))
    ours = deform_conv2d_plain(x, offset, weight, padding=1, groups=groups)
    assert ours.shape == ref.shape == (2, 12, 7, 11)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)
    # zero offsets: a plain grouped convolution
    zero = torch.zeros_like(offset)
    conv = torch.nn.functional.conv2d(x, weight, padding=1, groups=groups)
    assert torch.allclose(deform_conv2d_plain(x, zero, weight, 1, groups), conv, atol=1e-5)
