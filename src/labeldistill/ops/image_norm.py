"""Image normalisation on the device: uint8 images travel to the GPU (a quarter of the bytes of
float32) and are normalised there, with the same float32 arithmetic as the dataset's
:func:`~labeldistill.data.dataset.normalize_image` (its readable CPU reference), so the network
input is bit-identical.

``(x - mean_c) * (1 / std_c)`` per channel c, both constants float32 values computed on the
host (no tensor is created, nothing is synchronised).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def normalize_images(imgs: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (or any dtype) images [..., 3, H, W] -> float32 ``(x - mean) / std`` on their device.

    The channel order is that of ``imgs`` (the dataset has already applied the BGR quirk);
    ``mean`` / ``std`` are the RGB statistics of ``DataConfig`` in that channel order.
    """
    if imgs.dim() < 3 or imgs.shape[-3] != len(mean) or len(mean) != len(std):
        raise ValueError(
            f"images [..., {len(mean)}, H, W] expected, got {tuple(imgs.shape)} for "
            f"{len(mean)} means / {len(std)} stds"
        )
    out = imgs.to(torch.float32)  # a copy for uint8 input; 0..255 are exact
    if out.data_ptr() == imgs.data_ptr():
        out = out.clone()
    for c, (m, s) in enumerate(zip(mean, std)):
        m32 = float(np.float32(m))
        inv32 = float(np.float32(1.0) / np.float32(s))
        out[..., c, :, :].sub_(m32).mul_(inv32)
    return out


__all__: Sequence[str] = ("normalize_images",)
