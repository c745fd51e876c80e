"""Sparse 3D convolution in pure PyTorch (gather-GEMM-scatter), with an optional spconv 2.x path.

A :class:`SparseTensor` holds the features of the active sites of a batch of 3D grids. Two
convolutions exist, both cross-correlations exactly like ``torch.nn.Conv3d`` restricted to
active sites:

* :class:`SubMConv3d` (submanifold): odd kernel, stride 1, padding ``k // 2``; outputs exist only
  at the active input sites (same indices, same order);
* :class:`SparseConv3d` (regular, usually strided): the active output sites are all output
  positions ``q`` that receive at least one active input ``p = q * stride - padding + k`` for some
  kernel offset ``k`` (the spconv rule); output indices are sorted by (b, z, y, x).

Both run over *kernel maps*: for each kernel offset the list of (input row, output row) pairs,
found with linearised coordinates and ``torch.searchsorted``. The output is
``sum_k scatter_add(out_rows_k, features[in_rows_k] @ W[k])``; autograd provides the gradients.
Submanifold maps are cached on the tensor and reused by every layer with the same indices.

Weight layout (one for all our modules): **[kD, kH, kW, in, out]**, the mmcv / spconv-1.x layout
of the published checkpoints, so they load without conversion. :func:`convert_weight` converts to
and from the spconv 2.x layout [out, kD, kH, kW, in] and the dense ``Conv3d`` layout
[out, in, kD, kH, kW].

Backends: ``"torch"`` (always available), ``"spconv"`` (spconv >= 2.2, >= 2.3.8 with torch >= 2.3;
imported lazily, version and weight layout checked) and ``"auto"`` (spconv when it is usable and
the features are on CUDA, torch otherwise; a fallback on CUDA is warned about once). The
submanifold layers of one level share their kernel map in both backends (the site cache here,
spconv's ``indice_key`` there). ``fp32=True`` (the encoder's first layer, raw point features)
runs a layer in float32 whatever the ambient autocast.

Glossary: V active sites, C channels, B batch, (D, H, W) the 3D grid (z, y, x).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "spconv"]
Layout = Literal["ours", "mmcv", "spconv1", "spconv2", "torch"]
Int3 = tuple[int, int, int]


def _triple(v: int | Sequence[int]) -> Int3:
    if isinstance(v, int):
        return (v, v, v)
    t = tuple(int(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"expected an int or 3 ints, got {v!r}")
    return t


def conv_output_shape(
    spatial_shape: Sequence[int], kernel: Int3, stride: Int3, padding: Int3
) -> Int3:
    """Output grid of a (dense-equivalent) convolution: ``(n + 2p - k) // s + 1`` per axis."""
    return tuple(  # type: ignore[return-value]
        (int(n) + 2 * p - k) // s + 1 for n, k, s, p in zip(spatial_shape, kernel, stride, padding)
    )


# --------------------------------------------------------------------------------------------
# Sparse tensor
# --------------------------------------------------------------------------------------------


@dataclass
class SparseTensor:
    """Features of the active sites of B grids of shape ``spatial_shape`` = (D, H, W).

    features: [V, C]; indices: [V, 4] int64 (b, z, y, x), unique rows; ``cache`` holds kernel
    maps for these indices (shared by every tensor derived with :meth:`replace_feature`).
    """

    features: Tensor
    indices: Tensor
    spatial_shape: Int3
    batch_size: int
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.spatial_shape = tuple(int(s) for s in self.spatial_shape)  # type: ignore[assignment]
        if self.indices.dtype != torch.long:
            self.indices = self.indices.long()
        if self.features.dim() != 2 or self.indices.dim() != 2 or self.indices.shape[1] != 4:
            raise ValueError("SparseTensor needs features [V, C] and indices [V, 4]")
        if self.features.shape[0] != self.indices.shape[0]:
            raise ValueError(
                f"features ({self.features.shape[0]}) and indices ({self.indices.shape[0]}) differ"
            )

    def replace_feature(self, features: Tensor) -> SparseTensor:
        """Same sites (and kernel-map cache), new features [V, C']."""
        return SparseTensor(features, self.indices, self.spatial_shape, self.batch_size, self.cache)

    def linear_keys(self) -> Tensor:
        """[V] int64 ``((b * D + z) * H + y) * W + x``."""
        return linearize(self.indices, self.spatial_shape)

    def to_dense(self) -> Tensor:
        """[B, C, D, H, W] with zeros at inactive sites."""
        d, h, w = self.spatial_shape
        c = self.features.shape[1]
        flat = self.features.new_zeros(self.batch_size * d * h * w, c)
        flat = flat.index_put((self.linear_keys(),), self.features)
        return flat.view(self.batch_size, d, h, w, c).permute(0, 4, 1, 2, 3).contiguous()

    dense = to_dense

    @staticmethod
    def from_dense(x: Tensor) -> SparseTensor:
        """Sites of x [B, C, D, H, W] where any channel is non-zero."""
        active = (x != 0).any(dim=1)
        indices = torch.nonzero(active)
        feats = x.permute(0, 2, 3, 4, 1)[active]
        return SparseTensor(feats, indices, tuple(x.shape[2:]), int(x.shape[0]))  # type: ignore[arg-type]


def linearize(indices: Tensor, spatial_shape: Sequence[int]) -> Tensor:
    """indices [V, 4] (b, z, y, x) -> [V] int64 row-major keys of the [B, D, H, W] grid."""
    d, h, w = (int(s) for s in spatial_shape)
    idx = indices.long()
    return ((idx[:, 0] * d + idx[:, 1]) * h + idx[:, 2]) * w + idx[:, 3]


# --------------------------------------------------------------------------------------------
# Kernel maps
# --------------------------------------------------------------------------------------------


@dataclass
class KernelMap:
    """Pairs per kernel offset (offsets in weight order kD-major, then kH, kW).

    in_rows[k], out_rows[k]: [n_k] int64 rows of the input / output features.
    out_indices: [V_out, 4] int64; out_shape: (D', H', W').
    """

    in_rows: list[Tensor]
    out_rows: list[Tensor]
    out_indices: Tensor
    out_shape: Int3


def _kernel_offsets(kernel: Int3, device: torch.device, centred: bool = False) -> Tensor:
    """[K, 3] (kz, ky, kx) in weight order; ``centred``: minus ``k // 2`` per axis. Built on
    ``device`` directly (no host tensor is copied over)."""
    starts = [-(k // 2) if centred else 0 for k in kernel]
    grids = torch.meshgrid(
        *[torch.arange(s, s + k, device=device) for s, k in zip(starts, kernel)], indexing="ij"
    )
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def submanifold_kernel_map(indices: Tensor, spatial_shape: Int3, kernel: Int3) -> KernelMap:
    """Kernel map of a submanifold convolution (stride 1, padding k // 2, outputs = inputs).

    For an in-bounds neighbour offset ``o`` the linear key moves by a constant ``delta``, so the
    sorted keys shifted by ``delta`` are sorted queries (cache-friendly ``searchsorted``). Pairs of
    offset ``-o`` are those of ``o`` with input and output swapped, so only half the offsets are
    searched; the centre offset is the identity.
    """
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(f"submanifold convolution needs odd kernel sizes, got {kernel}")
    device = indices.device
    num = indices.shape[0]
    d, h, w = spatial_shape
    offsets = _kernel_offsets(kernel, device, centred=True)
    num_k = offsets.shape[0]
    center = num_k // 2
    in_rows: list[Tensor] = [indices.new_zeros(0)] * num_k
    out_rows: list[Tensor] = [indices.new_zeros(0)] * num_k
    ident = torch.arange(num, device=device)
    in_rows[center], out_rows[center] = ident, ident
    if num == 0 or num_k == 1:
        return KernelMap(in_rows, out_rows, indices, spatial_shape)
    keys = linearize(indices, spatial_shape)
    sorted_keys, perm = torch.sort(keys)
    coords = indices[perm, 1:]  # [V, 3] in key order
    half = offsets[:center]  # [K/2, 3]; offset K-1-k is the mirror of k
    delta = (half[:, 0] * h + half[:, 1]) * w + half[:, 2]
    queries = sorted_keys[None, :] + delta[:, None]  # [K/2, V], each row sorted
    pos = torch.searchsorted(sorted_keys, queries).clamp_(max=num - 1)
    nb = coords[None] + half[:, None]  # [K/2, V, 3]
    in_bounds = (nb >= 0).all(dim=2)
    for a in range(3):
        in_bounds &= nb[..., a] < spatial_shape[a]
    found = (sorted_keys[pos] == queries) & in_bounds
    counts = found.sum(dim=1).tolist()
    rows_out = perm.expand_as(pos)[found].split(counts)  # site q (output of offset o)
    rows_in = perm[pos[found]].split(counts)  # its neighbour q + o (input of offset o)
    for k in range(center):
        in_rows[k], out_rows[k] = rows_in[k], rows_out[k]
        in_rows[num_k - 1 - k], out_rows[num_k - 1 - k] = rows_out[k], rows_in[k]
    return KernelMap(in_rows, out_rows, indices, spatial_shape)


def strided_kernel_map(
    indices: Tensor, spatial_shape: Int3, kernel: Int3, stride: Int3, padding: Int3
) -> KernelMap:
    """Kernel map of a regular sparse convolution (spconv active-output rule)."""
    device = indices.device
    out_shape = conv_output_shape(spatial_shape, kernel, stride, padding)
    if min(out_shape) <= 0:
        raise ValueError(
            f"sparse convolution on grid {tuple(spatial_shape)} with kernel {kernel}, stride "
            f"{stride}, padding {padding} gives an empty output grid {out_shape}"
        )
    num = indices.shape[0]
    # per axis: which kernel taps k give an integer, in-range q = (p + pad - k) / s
    axis_ok = []
    for a in range(3):
        taps = torch.arange(kernel[a], device=device)
        num_q = indices[:, 1 + a, None] + padding[a] - taps[None, :]  # [V, k_a]
        q = torch.div(num_q, stride[a], rounding_mode="floor")
        axis_ok.append((num_q - q * stride[a] == 0) & (q >= 0) & (q < out_shape[a]))
    ok = axis_ok[0][:, :, None, None] & axis_ok[1][:, None, :, None] & axis_ok[2][:, None, None, :]
    ok = ok.reshape(num, -1).t()  # [K, V] in weight order
    k_idx, rows = torch.nonzero(ok, as_tuple=True)  # grouped by offset, then input row
    offsets = _kernel_offsets(kernel, device)[k_idx]  # [n, 3]
    q = torch.stack(
        [
            torch.div(
                indices[rows, 1 + a] + padding[a] - offsets[:, a], stride[a], rounding_mode="floor"
            )
            for a in range(3)
        ],
        dim=1,
    )
    cand_keys = linearize(torch.cat([indices[rows, :1], q], dim=1), out_shape)
    out_keys = torch.unique(cand_keys)  # sorted
    d, h, w = out_shape
    out_indices = torch.stack(
        [out_keys // (d * h * w), (out_keys // (h * w)) % d, (out_keys // w) % h, out_keys % w],
        dim=1,
    )
    out_rows = torch.searchsorted(out_keys, cand_keys)
    counts = ok.sum(dim=1).tolist()
    return KernelMap(list(rows.split(counts)), list(out_rows.split(counts)), out_indices, out_shape)


def _gather_gemm_scatter(features: Tensor, weight: Tensor, kmap: KernelMap) -> Tensor:
    """sum_k scatter(out_rows_k, features[in_rows_k] @ weight[k]); weight [K, C_in, C_out].

    For one offset every output row appears at most once (p -> q is injective), so the indexed
    accumulation is exact and deterministic. ``index_add_`` gives the same values as
    ``index_put_(accumulate=True)`` (the readable :func:`gather_gemm_scatter_reference`) and is a
    plain scatter on CUDA where the latter sorts its indices.
    """
    out = features.new_zeros(kmap.out_indices.shape[0], weight.shape[2])
    for k, (ins, outs) in enumerate(zip(kmap.in_rows, kmap.out_rows)):
        if ins.numel():
            vals = features.index_select(0, ins) @ weight[k]  # fp16 under autocast
            out.index_add_(0, outs, vals.to(out.dtype))
    return out


def gather_gemm_scatter_reference(features: Tensor, weight: Tensor, kmap: KernelMap) -> Tensor:
    """Readable reference of :func:`_gather_gemm_scatter` (``index_put_(accumulate=True)``)."""
    out = features.new_zeros(kmap.out_indices.shape[0], weight.shape[2])
    for k, (ins, outs) in enumerate(zip(kmap.in_rows, kmap.out_rows)):
        if ins.numel():
            vals = features.index_select(0, ins) @ weight[k]
            out.index_put_((outs,), vals.to(out.dtype), accumulate=True)
    return out


class _SparseConvFunction(torch.autograd.Function):
    """Gather-GEMM-scatter with a hand-written backward (no per-offset full-size temporaries).

    grad_features = sum_k scatter(in_rows_k, grad_out[out_rows_k] @ W[k]^T);
    grad_W[k] = features[in_rows_k]^T @ grad_out[out_rows_k].
    """

    @staticmethod
    def forward(ctx: Any, features: Tensor, weight: Tensor, kmap: KernelMap) -> Tensor:
        ctx.save_for_backward(features, weight)
        ctx.kmap = kmap
        return _gather_gemm_scatter(features, weight, kmap)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        features, weight = ctx.saved_tensors
        kmap: KernelMap = ctx.kmap
        grad_out = grad_out.contiguous()
        grad_feat = torch.zeros_like(features) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for k, (ins, outs) in enumerate(zip(kmap.in_rows, kmap.out_rows)):
            if ins.numel() == 0:
                continue
            go = grad_out.index_select(0, outs)
            if grad_w is not None:
                feats_k = features.index_select(0, ins).to(go.dtype)
                grad_w[k] = (feats_k.t() @ go).to(grad_w.dtype)
            if grad_feat is not None:
                vals = (go @ weight[k].to(go.dtype).t()).to(grad_feat.dtype)
                grad_feat.index_add_(0, ins, vals)
        return grad_feat, grad_w, None


def apply_kernel_map(
    features: Tensor, weight: Tensor, kmap: KernelMap, bias: Tensor | None = None
) -> Tensor:
    """Gather-GEMM-scatter: features [V, C_in], weight [kD, kH, kW, C_in, C_out] -> [V', C_out]."""
    c_in, c_out = weight.shape[-2:]
    out = _SparseConvFunction.apply(features, weight.reshape(-1, c_in, c_out), kmap)
    if bias is not None:
        out = out + bias
    return out


# --------------------------------------------------------------------------------------------
# Weight layouts
# --------------------------------------------------------------------------------------------

_TO_OURS: dict[str, tuple[int, ...]] = {
    "ours": (0, 1, 2, 3, 4),
    "mmcv": (0, 1, 2, 3, 4),
    "spconv1": (0, 1, 2, 3, 4),
    "spconv2": (1, 2, 3, 4, 0),  # [out, kD, kH, kW, in] -> [kD, kH, kW, in, out]
    "torch": (2, 3, 4, 1, 0),  # [out, in, kD, kH, kW] -> [kD, kH, kW, in, out]
}
_FROM_OURS: dict[str, tuple[int, ...]] = {
    "ours": (0, 1, 2, 3, 4),
    "mmcv": (0, 1, 2, 3, 4),
    "spconv1": (0, 1, 2, 3, 4),
    "spconv2": (4, 0, 1, 2, 3),
    "torch": (4, 3, 0, 1, 2),
}


def convert_weight(weight: Tensor, src: Layout, dst: Layout) -> Tensor:
    """Convert a 5-d sparse-conv weight between layouts.

    ours = mmcv = spconv1: [kD, kH, kW, in, out]; spconv2: [out, kD, kH, kW, in];
    torch (dense Conv3d): [out, in, kD, kH, kW].
    """
    if src not in _TO_OURS or dst not in _TO_OURS:
        raise ValueError(f"unknown weight layout {src!r} or {dst!r}; use one of {list(_TO_OURS)}")
    if weight.dim() != 5:
        raise ValueError(f"sparse-conv weights are 5-d, got {tuple(weight.shape)}")
    ours = weight.permute(*_TO_OURS[src])
    return ours.permute(*_FROM_OURS[dst]).contiguous()


def convert_state_dict(
    state_dict: dict[str, Tensor], src: Layout, dst: Layout
) -> dict[str, Tensor]:
    """Convert every 5-d tensor of a state dict (the sparse-conv weights) between layouts."""
    return {k: convert_weight(v, src, dst) if v.dim() == 5 else v for k, v in state_dict.items()}


# --------------------------------------------------------------------------------------------
# spconv backend (optional)
# --------------------------------------------------------------------------------------------

_SPCONV: Any = None
_SPCONV_TRIED = False
_SPCONV_REASON = ""
_FALLBACK_WARNED = False

#: The oldest spconv with the [out, kD, kH, kW, in] weight layout we convert to.
SPCONV_MIN_VERSION = (2, 2, 0)
#: spconv 2.3.0 - 2.3.7 with torch >= 2.3 die with SIGFPE on import of their ops; fixed in 2.3.8.
SPCONV_MIN_VERSION_TORCH_2_3 = (2, 3, 8)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in str(text).split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def spconv_incompatibility(spconv_version: str, torch_version: str) -> str | None:
    """Why an spconv version cannot be used with a torch version (None if it can).

    spconv < 2.2 keeps its weights in another layout than the [out, kD, kH, kW, in] we convert
    to; spconv 2.3.x before 2.3.8 kills the process (SIGFPE) with torch >= 2.3.
    """
    sv, tv = _version_tuple(spconv_version), _version_tuple(torch_version)
    if not sv:
        return f"spconv version {spconv_version!r} cannot be parsed"
    if sv < SPCONV_MIN_VERSION:
        return (
            f"spconv {spconv_version} is older than 2.2 (another weight layout); install "
            "spconv >= 2.3.8"
        )
    if tv[:2] >= (2, 3) and sv < SPCONV_MIN_VERSION_TORCH_2_3:
        return (
            f"spconv {spconv_version} crashes (SIGFPE) with torch {torch_version} >= 2.3; "
            "install spconv >= 2.3.8"
        )
    return None


def _installed_spconv_version() -> str | None:
    """Version of the installed ``spconv`` / ``spconv-cuXXX`` distribution, if any."""
    for dist in metadata.distributions():
        name = str(dist.metadata["Name"] or "").lower()
        if name == "spconv" or name.startswith("spconv-cu"):
            return str(dist.version)
    return None


def _import_spconv() -> Any:
    """``spconv.pytorch`` after the version check (raises ImportError with the reason)."""
    # The version is read from the installed distribution first, so that a known-bad version
    # is refused before its extension is loaded (the SIGFPE happens at import).
    version = _installed_spconv_version()
    if version is not None:
        reason = spconv_incompatibility(version, torch.__version__)
        if reason:
            raise ImportError(reason)
    # optional here: spconv is an optional CUDA backend, and a bad version crashes at import
    import spconv
    import spconv.pytorch as sp  # optional here: as above

    version = str(getattr(spconv, "__version__", version or ""))
    reason = spconv_incompatibility(version, torch.__version__)
    if reason:
        raise ImportError(reason)
    return sp


def spconv_module() -> Any:
    """``spconv.pytorch`` (2.x, version checked) when it imports, else None.

    The reason it is unavailable is kept (:func:`spconv_unavailable_reason`) and logged once at
    INFO; the backend ``auto`` warns once when it falls back to the torch backend on CUDA.
    """
    global _SPCONV, _SPCONV_TRIED, _SPCONV_REASON
    if not _SPCONV_TRIED:
        _SPCONV_TRIED = True
        try:
            _SPCONV = _import_spconv()
        except Exception as exc:
            _SPCONV = None
            _SPCONV_REASON = f"{type(exc).__name__}: {exc}"
            logger.info("spconv not available: %s", _SPCONV_REASON)
    return _SPCONV


def spconv_unavailable_reason() -> str:
    """Why :func:`spconv_module` returned None ('' when it is available or was not tried)."""
    return _SPCONV_REASON


def _warn_fallback_once() -> None:
    global _FALLBACK_WARNED
    if not _FALLBACK_WARNED:
        _FALLBACK_WARNED = True
        logger.warning(
            "sparse_backend 'auto' on CUDA falls back to the pure-torch sparse convolution "
            "(much slower): %s",
            _SPCONV_REASON or "spconv is not installed",
        )


def _check_spconv_layout(impl: Any, out_channels: int, kernel: Int3, in_channels: int) -> None:
    expected = (out_channels, *kernel, in_channels)
    shape = tuple(impl.weight.shape)
    if shape != expected:
        raise RuntimeError(
            f"spconv weight of shape {shape}, expected [out, kD, kH, kW, in] = {expected}: this "
            "spconv version uses another weight layout; use sparse_backend 'torch' or spconv "
            ">= 2.3.8"
        )


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class _SparseConvBase(nn.Module):
    """Shared parameters and dispatch of :class:`SubMConv3d` and :class:`SparseConv3d`."""

    subm: bool = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int],
        padding: int | Sequence[int],
        bias: bool,
        backend: Backend,
        fp32: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _triple(kernel_size)
        self.stride = _triple(stride)
        self.padding = _triple(padding)
        self.backend: Backend = backend
        self.fp32 = bool(fp32)
        self.weight = nn.Parameter(torch.empty(*self.kernel_size, in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self._spconv_impl: list[Any] = []  # not a registered submodule (no extra state keys)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(+-1/sqrt(fan_in)) like ``nn.Conv3d``'s default, fan_in = in * kD * kH * kW."""
        fan_in = self.in_channels * math.prod(self.kernel_size)
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
            + (", fp32=True" if self.fp32 else "")
        )

    def _use_spconv(self, x: SparseTensor) -> bool:
        if self.backend == "torch":
            return False
        available = spconv_module() is not None
        if self.backend == "spconv":
            if not available:
                raise RuntimeError(
                    "sparse_backend 'spconv' requested but spconv 2.x is not usable ("
                    f"{spconv_unavailable_reason() or 'not installed'}); use 'torch' or 'auto'"
                )
            return True
        if x.features.is_cuda and not available:
            _warn_fallback_once()
        return available and x.features.is_cuda

    def kernel_map(self, x: SparseTensor) -> KernelMap:
        """The (cached, for submanifold) kernel map of this layer on x."""
        if self.subm:
            key = ("subm", self.kernel_size)
            kmap = x.cache.get(key)
            if kmap is None:
                kmap = submanifold_kernel_map(x.indices, x.spatial_shape, self.kernel_size)
                x.cache[key] = kmap
            return kmap
        return strided_kernel_map(
            x.indices, x.spatial_shape, self.kernel_size, self.stride, self.padding
        )

    def forward(self, x: SparseTensor) -> SparseTensor:
        """x: features [V, C_in] -> [V', C_out] at the output sites of this convolution.

        With ``fp32`` (the first layer: raw point coordinates and intensities) the convolution
        runs in float32 with autocast disabled and returns float32 features.
        """
        if self.fp32:
            with torch.autocast(x.features.device.type, enabled=False):
                return self._forward(x.replace_feature(x.features.float()))
        return self._forward(x)

    def _forward(self, x: SparseTensor) -> SparseTensor:
        if self._use_spconv(x):
            return self._forward_spconv(x)
        kmap = self.kernel_map(x)
        feats = apply_kernel_map(x.features, self.weight, kmap, self.bias)
        if self.subm:
            return x.replace_feature(feats)
        return SparseTensor(feats, kmap.out_indices, kmap.out_shape, x.batch_size)

    def indice_key(self, x: SparseTensor) -> str:
        """spconv ``indice_key`` of this layer on x: submanifold layers of one level (same sites,
        kernel and grid) share their index pairs; strided layers get their own key."""
        shape = "x".join(str(v) for v in x.spatial_shape)
        kernel = "x".join(str(v) for v in self.kernel_size)
        if self.subm:
            return f"subm_k{kernel}_{shape}"
        stride = "x".join(str(v) for v in self.stride)
        pad = "x".join(str(v) for v in self.padding)
        return f"spconv_k{kernel}_s{stride}_p{pad}_{shape}"

    def _forward_spconv(self, x: SparseTensor) -> SparseTensor:
        sp = spconv_module()
        if not self._spconv_impl:
            cls = sp.SubMConv3d if self.subm else sp.SparseConv3d
            impl = cls(
                self.in_channels,
                self.out_channels,
                self.kernel_size,
                stride=self.stride,
                padding=self.padding,
                bias=False,
                indice_key=self.indice_key(x) if self.subm else None,
            )
            _check_spconv_layout(impl, self.out_channels, self.kernel_size, self.in_channels)
            del impl._parameters["weight"]  # replaced by a view of our parameter at each call
            self._spconv_impl.append(impl)
        impl = self._spconv_impl[0]
        if self.subm:
            impl.indice_key = self.indice_key(x)
        impl.weight = convert_weight(self.weight, "ours", "spconv2")
        impl.to(x.features.device)
        # One spconv tensor per set of sites, kept in the site cache: its indice_dict carries the
        # index pairs of every submanifold layer of the level to the next layer (indice_key).
        cached = x.cache.get("spconv_tensor")
        if cached is None:
            st = sp.SparseConvTensor(
                x.features, x.indices.int(), list(x.spatial_shape), x.batch_size
            )
            x.cache["spconv_tensor"] = st
        else:
            st = cached.replace_feature(x.features)
        out = impl(st)
        feats = out.features if self.bias is None else out.features + self.bias
        if self.subm:
            return x.replace_feature(feats)
        y = SparseTensor(feats, out.indices.long(), tuple(out.spatial_shape), x.batch_size)
        y.cache["spconv_tensor"] = out
        return y


class SubMConv3d(_SparseConvBase):
    """Submanifold sparse convolution: odd kernel, stride 1, padding k // 2, outputs only at
    the active input sites. Weight [kD, kH, kW, in, out]."""

    subm = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        *,
        bias: bool = False,
        backend: Backend = "auto",
        fp32: bool = False,
    ) -> None:
        k = _triple(kernel_size)
        pad = tuple(s // 2 for s in k)
        super().__init__(in_channels, out_channels, k, 1, pad, bias, backend, fp32)


class SparseConv3d(_SparseConvBase):
    """Regular sparse convolution (usually strided) with the spconv active-output rule.
    Weight [kD, kH, kW, in, out]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        *,
        bias: bool = False,
        backend: Backend = "auto",
        fp32: bool = False,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, bias, backend, fp32
        )


def is_sparse_module(module: nn.Module) -> bool:
    """Modules that take and return a :class:`SparseTensor` (others act on the features)."""
    return isinstance(module, (_SparseConvBase, SparseSequential, SparseBasicBlock))


class SparseSequential(nn.Sequential):
    """Sequential over a :class:`SparseTensor`: sparse modules get the tensor, every other module
    (BatchNorm1d, ReLU, ...) is applied to its features [V, C]."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        for module in self:
            x = module(x) if is_sparse_module(module) else x.replace_feature(module(x.features))
        return x


class SparseBasicBlock(nn.Module):
    """SubM3d 3^3 (no bias) + BN + ReLU + SubM3d + BN, + identity, ReLU (mmdet3d naming
    ``conv1, bn1, conv2, bn2``). features [V, C] -> [V, C], same sites."""

    def __init__(
        self,
        channels: int,
        *,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        self.conv1 = SubMConv3d(channels, channels, 3, backend=backend)
        self.bn1 = nn.BatchNorm1d(channels, eps=bn_eps, momentum=bn_momentum)
        self.conv2 = SubMConv3d(channels, channels, 3, backend=backend)
        self.bn2 = nn.BatchNorm1d(channels, eps=bn_eps, momentum=bn_momentum)
        self.relu = nn.ReLU()

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        return out.replace_feature(self.relu(self.bn2(out.features) + x.features))
