"""Voxel pooling ("splat" of lift-splat-shoot): frustum features summed into the BEV grid.

Every frustum point (camera n, depth bin d, feature pixel (v, u)) carries the feature
``depth[b, n, d, v, u] * context[b, n, :, v, u]`` and sits at ``geometry[b, n, d, v, u]``
(ego metres). Its cell is ``trunc_toward_zero((xyz - lower) / cell_size)`` (the original's
``.int()``, so points less than one cell below a lower bound land in cell 0); points with
``0 <= x < X``, ``0 <= y < Y``, ``0 <= z < Z`` are summed into ``out[b, :, y, x]`` (all z cells
collapse onto one BEV cell; the paper uses Z = 1). METHOD.md 4.3.

Three differentiable implementations with the same signature and results (up to float
summation order):

* :func:`voxel_pool_reference` materialises the ``[B, N, D, h, w, C]`` frustum features and
  scatters them with ``index_add_`` (readable, memory-hungry).
* :func:`voxel_pool` (default) never materialises the D x C features. Depth bins of one pixel
  that fall into the same cell are merged first (``S[cell, pixel] = sum_d depth``, a sparse
  matrix with at most one entry per frustum point); the BEV grid is then the sparse-dense
  product ``S @ context`` (context ``[B * N * h * w, C]``). Its backward is a custom autograd
  function: ``dcontext = S^T @ dout`` and ``dS[cell, pixel] = <dout[cell], context[pixel]>``
  (a sampled dense-dense product, only at the entries of S); gradients reach ``depth``
  through the (autograd-tracked) merge.
  Geometry gets no gradient (cell indices are integers), as in the original.
* :func:`voxel_pool_scatter` (exportable) sums the materialised features with one
  ``index_put`` into a grid with a dump cell: the ONNX export's pooling.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from labeldistill.config import GridConfig


@dataclass(frozen=True)
class VoxelGrid:
    """The pooling grid: lower corner (m), cell size (m) and cell counts ``(X, Y, Z)``."""

    lower: tuple[float, float, float]
    cell: tuple[float, float, float]
    size: tuple[int, int, int]

    @staticmethod
    def from_config(grid: GridConfig) -> VoxelGrid:
        """The student's LSS grid from the x/y/z bounds of a :class:`GridConfig`."""
        bounds = (grid.x_bound, grid.y_bound, grid.z_bound)
        return VoxelGrid(
            lower=tuple(float(b[0]) for b in bounds),  # type: ignore[arg-type]
            cell=tuple(float(b[2]) for b in bounds),  # type: ignore[arg-type]
            size=tuple(round((b[1] - b[0]) / b[2]) for b in bounds),  # type: ignore[arg-type]
        )


def _float32(v: float | np.floating) -> float:
    return float(np.float32(v))


def _cells(geometry: Tensor, grid: VoxelGrid) -> tuple[Tensor, Tensor]:
    """Flat BEV index ``b * Y * X + y * X + x`` of every frustum point and its in-grid mask.

    geometry: [B, N, D, h, w, 3] -> (cell [B*N*D*h*w] int64, valid [B*N*D*h*w] bool).
    The geometry is read in float32 whatever its dtype or the ambient autocast.
    """
    b = geometry.shape[0]
    # float32 exactly like the original: ``((geom - (coord - size / 2)) / size).int()`` with the
    # float32 buffer ``coord = lower + size / 2``. The two constants per axis are float32 values
    # computed on the host (no tensor is built here), so the device arithmetic is the same.
    geom = geometry.detach().to(torch.float32)
    axes = []
    for a in range(3):
        size = _float32(grid.cell[a])
        coord = _float32(grid.lower[a] + grid.cell[a] / 2.0)
        base = _float32(np.float32(coord) - np.float32(size) / np.float32(2.0))
        axes.append(((geom[..., a] - base) / size).int().long())
    nx, ny, nz = grid.size
    ix, iy, iz = (t.reshape(b, -1) for t in axes)
    valid = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (iz >= 0) & (iz < nz)
    batch = torch.arange(b, device=geometry.device).view(b, 1)
    flat = batch * (ny * nx) + iy * nx + ix
    return flat.reshape(-1), valid.reshape(-1)


def _check(geometry: Tensor, depth: Tensor, context: Tensor) -> None:
    if geometry.dim() != 6 or geometry.shape[-1] != 3:
        raise ValueError(f"geometry must be [B, N, D, h, w, 3], got {tuple(geometry.shape)}")
    if depth.shape != geometry.shape[:-1]:
        raise ValueError(
            f"depth {tuple(depth.shape)} does not match geometry {tuple(geometry.shape)}"
        )
    bb, nn, _, hh, ww = depth.shape
    if context.dim() != 5 or (context.shape[0], context.shape[1], *context.shape[3:]) != (
        bb,
        nn,
        hh,
        ww,
    ):
        raise ValueError(
            f"context must be [B, N, C, h, w] matching depth, got {tuple(context.shape)}"
        )


def voxel_pool_reference(
    geometry: Tensor, depth: Tensor, context: Tensor, grid: VoxelGrid
) -> Tensor:
    """Readable reference: materialise depth x context, ``index_add_`` into the grid.

    geometry [B, N, D, h, w, 3] (ego metres), depth [B, N, D, h, w], context [B, N, C, h, w]
    -> BEV features [B, C, Y, X] (sum over the points of each cell).
    """
    _check(geometry, depth, context)
    b, c = context.shape[0], context.shape[2]
    nx, ny, _ = grid.size
    ctx = context.to(depth.dtype).permute(0, 1, 3, 4, 2).unsqueeze(2)  # [B, N, 1, h, w, C]
    feats = (depth.unsqueeze(-1) * ctx).reshape(-1, c)  # [B*N*D*h*w, C]
    cell, valid = _cells(geometry, grid)
    out = feats.new_zeros(b * ny * nx, c)
    out = out.index_add(0, cell[valid], feats[valid])
    return out.view(b, ny, nx, c).permute(0, 3, 1, 2).contiguous()


class _Csr:
    """A sparse ``[n_rows, n_cols]`` pattern in CSR form plus the permutation to its transpose.

    ``crow`` [n_rows + 1], ``col`` [K] (rows sorted, as produced by a sorted unique of
    ``row * n_cols + col``), ``row`` [K]; ``t_crow`` [n_cols + 1], ``t_col`` [K] and ``t_perm``
    [K] describe the transpose (entry k of the transpose is entry ``t_perm[k]``).
    Index arithmetic only (built under ``no_grad``); the row pointers come from
    ``searchsorted`` on the sorted rows, which needs no host synchronisation (``bincount`` on
    CUDA reads its maximum back).
    """

    def __init__(self, row: Tensor, col: Tensor, n_rows: int, n_cols: int) -> None:
        with torch.no_grad():
            self.shape = (n_rows, n_cols)
            self.row, self.col = row, col
            self.crow = _crow(row, n_rows)
            self.t_perm = torch.argsort(col, stable=True)
            self.t_col = row[self.t_perm]
            self.t_crow = _crow(col[self.t_perm], n_cols)

    def matrix(self, vals: Tensor) -> Tensor:
        """The sparse matrix [n_rows, n_cols] with values ``vals`` [K] (pattern order)."""
        return _csr(self.crow, self.col, vals, self.shape)

    def transposed(self, vals: Tensor) -> Tensor:
        """The transpose [n_cols, n_rows] of :meth:`matrix`."""
        return _csr(self.t_crow, self.t_col, vals[self.t_perm], (self.shape[1], self.shape[0]))


def _csr(crow: Tensor, col: Tensor, vals: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        return torch.sparse_csr_tensor(
            crow, col, vals, size=size, device=vals.device, check_invariants=False
        )


def _crow(sorted_rows: Tensor, n_rows: int) -> Tensor:
    """Row pointers [n_rows + 1] of the sorted row indices ``sorted_rows`` [K]."""
    bounds = torch.arange(n_rows + 1, device=sorted_rows.device, dtype=sorted_rows.dtype)
    return torch.searchsorted(sorted_rows, bounds)


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32: the sparse products never run in half
    precision (no CPU kernel; a rounded BEV on CUDA; bf16 SpMM has had wrong-output bugs)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float64 if dtype == torch.float64 else torch.float32


class _SparseDenseMM(torch.autograd.Function):
    """``out = S @ dense`` with ``S`` given by a :class:`_Csr` pattern and values ``vals`` [K].

    dense [P, C] -> [R, C] in float32 (float64 for float64 inputs), whatever the ambient
    autocast: forward and backward run with autocast disabled (autocast would cast the CSR
    matrix and the context to fp16 / bf16). Backward: ``ddense = S^T @ dout`` (CSR of the
    transpose) and ``dvals = (dout @ dense^T)`` sampled at the pattern
    (``torch.sparse.sampled_addmm``); the gradients are returned in the input dtypes.
    """

    @staticmethod
    def forward(ctx, pattern: _Csr, vals: Tensor, dense: Tensor) -> Tensor:
        dtype = _compute_dtype(vals, dense)
        ctx.pattern = pattern
        ctx.in_dtypes = (vals.dtype, dense.dtype)
        ctx.save_for_backward(vals, dense)
        with torch.autocast(dense.device.type, enabled=False):
            return torch.sparse.mm(pattern.matrix(vals.to(dtype)), dense.to(dtype).contiguous())

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        vals, dense = ctx.saved_tensors
        pattern: _Csr = ctx.pattern
        dtype = _compute_dtype(vals, dense, grad_out)
        grad_vals = grad_dense = None
        with torch.autocast(grad_out.device.type, enabled=False):
            grad_out = grad_out.to(dtype).contiguous()
            if ctx.needs_input_grad[1]:
                sampled = torch.sparse.sampled_addmm(
                    pattern.matrix(vals.new_zeros(vals.shape, dtype=dtype)),
                    grad_out,
                    dense.to(dtype).t(),
                    beta=0.0,
                )
                grad_vals = sampled.values().to(ctx.in_dtypes[0])
            if ctx.needs_input_grad[2]:
                grad_dense = torch.sparse.mm(pattern.transposed(vals.to(dtype)), grad_out)
                grad_dense = grad_dense.to(ctx.in_dtypes[1])
        return None, grad_vals, grad_dense


def pooling_pattern(geometry: Tensor, grid: VoxelGrid) -> tuple[_Csr, Tensor]:
    """The index preparation of :func:`voxel_pool` (no gradients, integer work only).

    geometry [B, N, D, h, w, 3] -> (pattern of S [B*Y*X + 1 (dummy row), B*N*h*w], inverse
    [B*N*D*h*w]: the entry of S each frustum point adds its depth to).
    """
    b, n, d, h, w, _ = geometry.shape
    nx, ny, _ = grid.size
    n_cells = b * ny * nx
    n_pix = b * n * h * w
    with torch.no_grad():
        cell, valid = _cells(geometry, grid)
        cell = torch.where(valid, cell, torch.full_like(cell, n_cells))  # dummy row n_cells
        # Pixel (b, n, v, u) of every frustum point, as a flat row of context [B*N*h*w, C].
        pix = torch.arange(n_pix, device=geometry.device).view(b * n, 1, h * w)
        pix = pix.expand(b * n, d, h * w).reshape(-1)
        uniq, inverse = torch.unique(cell * n_pix + pix, sorted=True, return_inverse=True)
        rows = torch.div(uniq, n_pix, rounding_mode="floor")
        return _Csr(rows, uniq - rows * n_pix, n_cells + 1, n_pix), inverse


def voxel_pool(geometry: Tensor, depth: Tensor, context: Tensor, grid: VoxelGrid) -> Tensor:
    """Fast pooling (default): merge depth bins per (cell, pixel), then sparse ``S @ context``.

    Same signature and result as :func:`voxel_pool_reference`:
    geometry [B, N, D, h, w, 3] (ego metres), depth [B, N, D, h, w], context [B, N, C, h, w]
    -> [B, C, Y, X] in ``promote_types(depth.dtype, context.dtype)``. Differentiable w.r.t.
    depth and context. The merge and the sparse products accumulate in float32 (float64 for
    float64 inputs) under any autocast. Points outside the grid go to one extra dummy row of S
    (dropped at the end) instead of being selected, so the only host synchronisation is the
    size of ``torch.unique``.
    """
    _check(geometry, depth, context)
    b, n, d, h, w = depth.shape
    c = context.shape[2]
    nx, ny, _ = grid.size
    n_cells = b * ny * nx
    n_pix = b * n * h * w
    dtype = _compute_dtype(depth, context)
    pattern, inverse = pooling_pattern(geometry, grid)
    flat_depth = depth.reshape(-1).to(dtype)
    vals = flat_depth.new_zeros(pattern.col.shape[0]).index_add(0, inverse, flat_depth)
    dense = context.permute(0, 1, 3, 4, 2).reshape(n_pix, c)  # [B*N*h*w, C]
    out = _SparseDenseMM.apply(pattern, vals, dense)[:n_cells]
    out = out.to(torch.promote_types(depth.dtype, context.dtype))
    return out.view(b, ny, nx, c).permute(0, 3, 1, 2).contiguous()


class _ScatterAddRows(torch.autograd.Function):
    """``base.index_put((index[:, 0],), updates, accumulate=True)``: rows of ``updates`` [P, C]
    summed into ``base`` [R, C] at ``index`` [P, 1] (int64). Exported as one standard ONNX
    ``ScatterElements`` (axis 0, ``reduction='add'``) with the index expanded to [P, C]. The
    tracer's own ``index_put`` export drops the accumulation (wrong with repeated indices) and
    onnxruntime's ``ScatterND`` add is not thread-safe (:func:`voxel_pool_scatter`)."""

    @staticmethod
    def forward(ctx: Any, base: Tensor, index: Tensor, updates: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        return base.index_put((index[:, 0],), updates, accumulate=True)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        index = ctx.saved_tensors[0]
        return grad, None, grad.index_select(0, index[:, 0])

    @staticmethod
    def symbolic(g: Any, base: Any, index: Any, updates: Any) -> Any:
        full_index = g.op("Expand", index, g.op("Shape", updates))
        return g.op("ScatterElements", base, full_index, updates, axis_i=0, reduction_s="add")


def voxel_pool_scatter(geometry: Tensor, depth: Tensor, context: Tensor, grid: VoxelGrid) -> Tensor:
    """Exportable pooling (``pool_impl: scatter``, the student built with ``exportable=True``):
    one ``index_put`` (accumulate) into a grid with a dump cell for the points outside it.

    Same signature and result as :func:`voxel_pool_reference`: geometry [B, N, D, h, w, 3],
    depth [B, N, D, h, w], context [B, N, C, h, w] -> [B, C, Y, X]. Exports as one ONNX
    ``ScatterElements`` (reduction add), exact at any onnxruntime thread count; not
    ``ScatterND``, whose add in onnxruntime (1.31) races on repeated indices with
    ``intra_op_num_threads > 1`` (errors of 10-150 on a 400k-row sum).
    """
    b, n, d, h, w = depth.shape
    c = context.shape[2]
    nx, ny, nz = grid.size
    cell = torch.tensor(grid.cell, dtype=torch.float32)
    coord = torch.tensor(
        [lo + s / 2.0 for lo, s in zip(grid.lower, grid.cell)], dtype=torch.float32
    )
    base = coord - cell / 2.0  # computed exactly as the training op (float32)
    idx = ((geometry.float() - base.to(geometry.device)) / cell.to(geometry.device)).int().long()
    ix, iy, iz = idx[..., 0], idx[..., 1], idx[..., 2]
    valid = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (iz >= 0) & (iz < nz)
    n_cells = ny * nx + 1  # + dump cell
    batch = torch.arange(b, device=depth.device).view(b, 1, 1, 1, 1)
    flat = torch.where(valid, iy * nx + ix, torch.full_like(ix, ny * nx)) + batch * n_cells
    ctx = context.permute(0, 1, 3, 4, 2).unsqueeze(2)  # [B, N, 1, h, w, C]
    feats = (depth.unsqueeze(-1) * ctx).reshape(-1, c)
    out = depth.new_zeros(b * n_cells, c)
    out = _ScatterAddRows.apply(out, flat.reshape(-1, 1), feats)
    out = out.view(b, n_cells, c)[:, : ny * nx]
    return out.reshape(b, ny, nx, c).permute(0, 3, 1, 2).contiguous()


def pool_fn(impl: str):
    """The pooling function named by a config value: ``"fast"``, ``"reference"`` or
    ``"scatter"`` (exportable)."""
    if impl == "fast":
        return voxel_pool
    if impl == "reference":
        return voxel_pool_reference
    if impl == "scatter":
        return voxel_pool_scatter
    raise ValueError(
        f"unknown voxel pooling implementation {impl!r} (use 'fast', 'reference' or 'scatter')"
    )


__all__: Sequence[str] = (
    "VoxelGrid",
    "pool_fn",
    "pooling_pattern",
    "voxel_pool",
    "voxel_pool_reference",
    "voxel_pool_scatter",
)
