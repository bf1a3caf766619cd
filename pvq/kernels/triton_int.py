"""Triton kernel of the integer product (:mod:`pvq.kernels.int_product`); importing it needs Triton.

Per program: a tile of ``BLOCK_T`` tokens x ``BLOCK_O`` outputs. For each slice ``j`` of ``s``
inputs (``s`` padded to a power of two >= 32 with masked zeros), the int8 tiles of
activation points ``[BLOCK_T, S]`` and weight points ``[S, BLOCK_O]`` go through one
``tl.dot`` with int32 accumulation; the int32 tile is scaled by ``gx[t, j] * gw[o, j]`` in
float32 and added to the float32 accumulator.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["int_product_kernel"]


@triton.jit
def _int_product(x_ptr, xg_ptr, w_ptr, wg_ptr, y_ptr, T, O, N, J, S: tl.constexpr,
                 BLOCK_T: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_S: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_o = tl.program_id(1)
    rt = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    ro = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    rs = tl.arange(0, BLOCK_S)
    mt = rt < T
    mo = ro < O
    ms = rs < S
    acc = tl.zeros((BLOCK_T, BLOCK_O), dtype=tl.float32)
    for j in range(0, J):
        xs = tl.load(x_ptr + rt[:, None].to(tl.int64) * N + j * S + rs[None, :], mask=mt[:, None] & ms[None, :], other=0)
        ws = tl.load(w_ptr + ro[None, :].to(tl.int64) * N + j * S + rs[:, None], mask=ms[:, None] & mo[None, :], other=0)
        d = tl.dot(xs, ws, out_dtype=tl.int32)
        gx = tl.load(xg_ptr + rt.to(tl.int64) * J + j, mask=mt, other=0.0)
        gw = tl.load(wg_ptr + ro.to(tl.int64) * J + j, mask=mo, other=0.0)
        acc += d.to(tl.float32) * (gx[:, None] * gw[None, :])
    tl.store(y_ptr + rt[:, None].to(tl.int64) * O + ro[None, :], acc, mask=mt[:, None] & mo[None, :])


def int_product_kernel(xp: torch.Tensor, xg: torch.Tensor, wp: torch.Tensor, wg: torch.Tensor, s: int) -> torch.Tensor:
    """``y [T, O]`` float32 of int8 points ``xp [T, N]``, ``wp [O, N]`` and float32 gains
    ``xg [T, N/s]``, ``wg [O, N/s]`` (all contiguous, on one device)."""
    t, n = xp.shape
    o = wp.shape[0]
    y = torch.empty(t, o, dtype=torch.float32, device=xp.device)
    block_s = max(32, triton.next_power_of_2(s))  # int8 MMA tiles take k in steps of 32
    block_t = 16 if t <= 16 else (32 if t <= 64 else 64)
    block_o = 64
    grid = (triton.cdiv(t, block_t), triton.cdiv(o, block_o))
    _int_product[grid](xp, xg, wp, wg, y, t, o, n, n // s, s, BLOCK_T=block_t, BLOCK_O=block_o, BLOCK_S=block_s)
    return y
