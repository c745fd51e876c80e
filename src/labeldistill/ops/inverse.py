"""The closed-form inverse of 4x4 matrices (element-wise ops: exports to any ONNX opset, which
has no matrix inverse operator)."""

from __future__ import annotations

import torch
from torch import Tensor


def inverse_4x4(m: Tensor) -> Tensor:
    """Inverse of 4x4 matrices [..., 4, 4] by the adjugate (2x2 sub-determinant expansion);
    element-wise ops only, so it exports to any ONNX opset."""
    a = [[m[..., i, j] for j in range(4)] for i in range(4)]
    s0 = a[0][0] * a[1][1] - a[1][0] * a[0][1]
    s1 = a[0][0] * a[1][2] - a[1][0] * a[0][2]
    s2 = a[0][0] * a[1][3] - a[1][0] * a[0][3]
    s3 = a[0][1] * a[1][2] - a[1][1] * a[0][2]
    s4 = a[0][1] * a[1][3] - a[1][1] * a[0][3]
    s5 = a[0][2] * a[1][3] - a[1][2] * a[0][3]
    c5 = a[2][2] * a[3][3] - a[3][2] * a[2][3]
    c4 = a[2][1] * a[3][3] - a[3][1] * a[2][3]
    c3 = a[2][1] * a[3][2] - a[3][1] * a[2][2]
    c2 = a[2][0] * a[3][3] - a[3][0] * a[2][3]
    c1 = a[2][0] * a[3][2] - a[3][0] * a[2][2]
    c0 = a[2][0] * a[3][1] - a[3][0] * a[2][1]
    det = s0 * c5 - s1 * c4 + s2 * c3 + s3 * c2 - s4 * c1 + s5 * c0
    rows = [
        [
            a[1][1] * c5 - a[1][2] * c4 + a[1][3] * c3,
            -a[0][1] * c5 + a[0][2] * c4 - a[0][3] * c3,
            a[3][1] * s5 - a[3][2] * s4 + a[3][3] * s3,
            -a[2][1] * s5 + a[2][2] * s4 - a[2][3] * s3,
        ],
        [
            -a[1][0] * c5 + a[1][2] * c2 - a[1][3] * c1,
            a[0][0] * c5 - a[0][2] * c2 + a[0][3] * c1,
            -a[3][0] * s5 + a[3][2] * s2 - a[3][3] * s1,
            a[2][0] * s5 - a[2][2] * s2 + a[2][3] * s1,
        ],
        [
            a[1][0] * c4 - a[1][1] * c2 + a[1][3] * c0,
            -a[0][0] * c4 + a[0][1] * c2 - a[0][3] * c0,
            a[3][0] * s4 - a[3][1] * s2 + a[3][3] * s0,
            -a[2][0] * s4 + a[2][1] * s2 - a[2][3] * s0,
        ],
        [
            -a[1][0] * c3 + a[1][1] * c1 - a[1][2] * c0,
            a[0][0] * c3 - a[0][1] * c1 + a[0][2] * c0,
            -a[3][0] * s3 + a[3][1] * s1 - a[3][2] * s0,
            a[2][0] * s3 - a[2][1] * s1 + a[2][2] * s0,
        ],
    ]
    adj = torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)
    return adj / det[..., None, None]
