"""Voxel pooling ("splat" of lift-splat-shoot): frustum features summed into the BEV grid.

Every frustum point (camera n, depth bin d, feature pixel (v, u)) carries the feature
``depth[b, n, d, v, u] * context[b, n, :, v, u]`` and sits at ``geometry[b, n, d, v, u]``
(ego metres). Its cell is ``trunc_toward_zero((xyz - lower) / cell_size)`` (the original's
``.int()``, so points less than one cell below a lower bound land in cell 0); points with
``0 <= x < X``, ``0 <= y < Y``, ``0 <= z < Z`` are summed into ``out[b, :, y, x]`` (all z cells
collapse onto one BEV cell; the paper uses Z = 1). METHOD.md 4.3.

Two differentiable implementations with the same signature and results (up to float
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
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

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


def _cells(geometry: Tensor, grid: VoxelGrid) -> tuple[Tensor, Tensor]:
    """Flat BEV index ``b * Y * X + y * X + x`` of every frustum point and its in-grid mask.

    geometry: [B, N, D, h, w, 3] -> (cell [B*N*D*h*w] int64, valid [B*N*D*h*w] bool).
    """
    b = geometry.shape[0]
    # float32 exactly like the original: ``((geom - (coord - size / 2)) / size).int()`` with the
    # buffer ``coord = lower + size / 2``.
    cell = torch.tensor(grid.cell, dtype=torch.float32, device=geometry.device)
    coord = torch.tensor(
        [lo + c / 2.0 for lo, c in zip(grid.lower, grid.cell)],
        dtype=torch.float32,
        device=geometry.device,
    )
    idx = ((geometry.detach().float() - (coord - cell / 2.0)) / cell).int().long()
    idx = idx.reshape(b, -1, 3)
    nx, ny, nz = grid.size
    valid = (
        (idx[..., 0] >= 0)
        & (idx[..., 0] < nx)
        & (idx[..., 1] >= 0)
        & (idx[..., 1] < ny)
        & (idx[..., 2] >= 0)
        & (idx[..., 2] < nz)
    )
    batch = torch.arange(b, device=geometry.device).view(b, 1)
    flat = batch * (ny * nx) + idx[..., 1] * nx + idx[..., 0]
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
    """

    def __init__(self, row: Tensor, col: Tensor, n_rows: int, n_cols: int) -> None:
        self.shape = (n_rows, n_cols)
        self.row, self.col = row, col
        self.crow = _crow(row, n_rows)
        self.t_perm = torch.argsort(col, stable=True)
        self.t_col = row[self.t_perm]
        self.t_crow = _crow(col, n_cols)

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


def _crow(sorted_or_any_rows: Tensor, n_rows: int) -> Tensor:
    counts = torch.bincount(sorted_or_any_rows, minlength=n_rows)
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=counts.device)
    crow[1:] = torch.cumsum(counts, 0)
    return crow


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    # Sparse kernels have no half-precision CPU path; accumulate in fp32 there (and always for
    # stability of the sums).
    return torch.float64 if dtype == torch.float64 else torch.float32


class _SparseDenseMM(torch.autograd.Function):
    """``out = S @ dense`` with ``S`` given by a :class:`_Csr` pattern and values ``vals`` [K].

    dense [P, C] -> [R, C]. Backward: ``ddense = S^T @ dout`` (CSR of the transpose) and
    ``dvals = (dout @ dense^T)`` sampled at the pattern (``torch.sparse.sampled_addmm``).
    """

    @staticmethod
    def forward(ctx, pattern: _Csr, vals: Tensor, dense: Tensor) -> Tensor:  # type: ignore[override]
        dtype = _compute_dtype(vals, dense)
        ctx.pattern = pattern
        ctx.in_dtypes = (vals.dtype, dense.dtype)
        ctx.save_for_backward(vals, dense)
        return torch.sparse.mm(pattern.matrix(vals.to(dtype)), dense.to(dtype).contiguous())

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]  # noqa: ANN205
        vals, dense = ctx.saved_tensors
        pattern: _Csr = ctx.pattern
        dtype = _compute_dtype(vals, dense, grad_out)
        grad_out = grad_out.to(dtype).contiguous()
        grad_vals = grad_dense = None
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


def voxel_pool(geometry: Tensor, depth: Tensor, context: Tensor, grid: VoxelGrid) -> Tensor:
    """Fast pooling (default): merge depth bins per (cell, pixel), then sparse ``S @ context``.

    Same signature and result as :func:`voxel_pool_reference`:
    geometry [B, N, D, h, w, 3] (ego metres), depth [B, N, D, h, w], context [B, N, C, h, w]
    -> [B, C, Y, X]. Differentiable w.r.t. depth and context.
    """
    _check(geometry, depth, context)
    b, n, d, h, w = depth.shape
    c = context.shape[2]
    nx, ny, _ = grid.size
    n_cells = b * ny * nx
    n_pix = b * n * h * w
    cell, valid = _cells(geometry, grid)
    # Pixel (b, n, v, u) of every frustum point, as a flat row of context [B*N*h*w, C].
    pix = torch.arange(n_pix, device=depth.device).view(b * n, 1, h * w).expand(b * n, d, h * w)
    pix = pix.reshape(-1)
    point = torch.nonzero(valid).squeeze(1)
    key = cell[point] * n_pix + pix[point]
    uniq, inverse = torch.unique(key, sorted=True, return_inverse=True)
    vals = depth.reshape(-1).new_zeros(uniq.numel())
    vals = vals.index_add(0, inverse, depth.reshape(-1)[point])  # S values, autograd-tracked
    rows = torch.div(uniq, n_pix, rounding_mode="floor")
    pattern = _Csr(rows, uniq - rows * n_pix, n_cells, n_pix)
    dense = context.permute(0, 1, 3, 4, 2).reshape(n_pix, c)  # [B*N*h*w, C]
    out = _SparseDenseMM.apply(pattern, vals, dense)
    out = out.to(torch.promote_types(depth.dtype, context.dtype))
    return out.view(b, ny, nx, c).permute(0, 3, 1, 2).contiguous()


def pool_fn(impl: str):  # noqa: ANN201
    """The pooling function named by a config value: ``"fast"`` or ``"reference"``."""
    if impl == "fast":
        return voxel_pool
    if impl == "reference":
        return voxel_pool_reference
    raise ValueError(f"unknown voxel pooling implementation {impl!r} (use 'fast' or 'reference')")


__all__: Sequence[str] = ("VoxelGrid", "voxel_pool", "voxel_pool_reference", "pool_fn")
