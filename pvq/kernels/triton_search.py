"""Triton kernel of the PVQ weight search's greedy fill (:func:`pvq.codecs.pyramid_search._greedy_fill`).

The solver calls the shape search once per column block, and its PyTorch loop launches about 14
operators per pulse added (profiled on an H200: about 420 launches per column block of a
4096x4096 layer, mostly the fill; docs/large_models.md). This kernel runs the whole fill in one
launch: one program per ``BLOCK_N`` rows of ``D`` (padded to a power of two, masked), float64 in
registers, the same IEEE operations in the same order as the loop, no fused multiply-adds, first
maximum on ties (``torch.argmax``), so its points equal the loop's bit for bit. The starting sums
(``<|x|, y>``, ``<y, y>``) come from the caller, who computes them once for either path.
Importing this module needs Triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["greedy_fill_rows", "greedy_fill_triton"]


@triton.jit
def greedy_fill_rows(a, yd, xy, yy, left, mc, cols, BLOCK_D: tl.constexpr):
    """The fill on a tile in registers: ``a``, ``yd`` ``[rows, BLOCK_D]`` float64 (|x|, points so far),
    ``xy``, ``yy`` ``[rows]`` float64, ``left`` ``[rows]`` pulses to add, ``mc`` the real columns.
    Returns the points ``yd`` (float64) and their energies ``yy``. Shared with the activation projection (``triton_act.py``)."""
    while tl.max(left, axis=0) > 0:
        t = xy[:, None] + a
        score = tl.where(mc[None, :], t * t / (yy[:, None] + 2.0 * yd + 1.0), -1.0)
        best = tl.max(score, axis=1)
        first = tl.min(tl.where(score == best[:, None], cols[None, :], BLOCK_D), axis=1)
        hit = (cols[None, :] == first[:, None]) & (left > 0)[:, None]
        xy += tl.sum(tl.where(hit, a, 0.0), axis=1)  # one term and zeros: exact, as the loop's gather
        yy += tl.sum(tl.where(hit, 2.0 * yd + 1.0, 0.0), axis=1)
        yd += hit.to(tl.float64)
        left -= (left > 0).to(left.dtype)
    return yd, yy


@triton.jit
def _greedy_fill_kernel(ax_ptr, y_ptr, xy_ptr, yy_ptr, left_ptr, N,
                        D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    mn = rn < N
    mc = cols < D
    offs = rn[:, None].to(tl.int64) * D + cols[None, :]
    mask = mn[:, None] & mc[None, :]
    a = tl.load(ax_ptr + offs, mask=mask, other=0.0)
    yd = tl.load(y_ptr + offs, mask=mask, other=0).to(tl.float64)
    xy = tl.load(xy_ptr + rn, mask=mn, other=0.0)
    yy = tl.load(yy_ptr + rn, mask=mn, other=1.0)
    left = tl.load(left_ptr + rn, mask=mn, other=0)
    yd, yy = greedy_fill_rows(a, yd, xy, yy, left, mc, cols, BLOCK_D)
    tl.store(y_ptr + offs, yd.to(tl.int64), mask=mask)


def greedy_fill_triton(ax: torch.Tensor, y: torch.Tensor, xy: torch.Tensor, yy: torch.Tensor,
                       left: torch.Tensor, block_n: int | None = None) -> torch.Tensor:
    """Points ``[n, D]`` int64: ``y`` (non-negative, rows summing to at most K) with ``left [n]`` pulses
    added greedily, from ``ax = |x| [n, D]`` float64 and the rows' ``xy = <ax, y>``, ``yy = <y, y>``
    ``[n]`` float64. ``y`` is not modified."""
    n, d = ax.shape
    out = y.to(torch.int64).contiguous().clone()
    if n == 0:
        return out
    block_d = max(2, triton.next_power_of_2(d))
    if block_n is None:
        block_n = max(1, min(64, 1024 // block_d)) if ax.device.type != "cpu" else max(1, 4096 // block_d)
    grid = (triton.cdiv(n, block_n),)
    _greedy_fill_kernel[grid](ax.double().contiguous(), out, xy.double().contiguous(), yy.double().contiguous(),
                              left.to(torch.int64).contiguous(), n, D=d, BLOCK_D=block_d, BLOCK_N=block_n,
                              enable_fp_fusion=False)
    return out
