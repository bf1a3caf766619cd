"""Triton kernel of the integer product (:mod:`pvq.kernels.int_product`); importing it needs Triton.

Per program: a tile of ``BLOCK_T`` tokens x ``BLOCK_O`` outputs and a range of ``JP`` slices
(the slices are split over ``grid[2]`` programs whose float32 partial sums are added
atomically, so that a batch-1 product of a few row tiles still fills the GPU). For each
slice ``j`` of ``s`` inputs (``s`` padded to a power of two >= 32 with masked zeros), the int8
tiles of activation points ``[BLOCK_T, S]`` and weight points ``[S, BLOCK_O]`` go through one
``tl.dot`` with int32 accumulation; the int32 tile is scaled by ``gx[t, j] * gw[o, j]`` in
float32 and added to the float32 accumulator. Tiles: :func:`int_product_config`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["int_product_config", "int_product_kernel"]


@triton.jit
def _int_product(x_ptr, xg_ptr, w_ptr, wg_ptr, y_ptr, T, O, N, J, JP, S: tl.constexpr,
                 BLOCK_T: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_S: tl.constexpr, ATOMIC: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_o = tl.program_id(1)
    rt = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    ro = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    rs = tl.arange(0, BLOCK_S)
    mt = rt < T
    mo = ro < O
    ms = rs < S
    j0 = tl.program_id(2) * JP
    j1 = tl.minimum(j0 + JP, J)
    acc = tl.zeros((BLOCK_T, BLOCK_O), dtype=tl.float32)
    for j in range(j0, j1):
        xs = tl.load(x_ptr + rt[:, None].to(tl.int64) * N + j * S + rs[None, :], mask=mt[:, None] & ms[None, :], other=0)
        ws = tl.load(w_ptr + ro[None, :].to(tl.int64) * N + j * S + rs[:, None], mask=ms[:, None] & mo[None, :], other=0)
        d = tl.dot(xs, ws, out_dtype=tl.int32)
        gx = tl.load(xg_ptr + rt.to(tl.int64) * J + j, mask=mt, other=0.0)
        gw = tl.load(wg_ptr + ro.to(tl.int64) * J + j, mask=mo, other=0.0)
        acc += d.to(tl.float32) * (gx[:, None] * gw[None, :])
    dest = y_ptr + rt[:, None].to(tl.int64) * O + ro[None, :]
    if ATOMIC:
        tl.atomic_add(dest, acc, mask=mt[:, None] & mo[None, :])
    else:
        tl.store(dest, acc, mask=mt[:, None] & mo[None, :])


def int_product_config(t: int, o: int, j: int, sms: int = 132) -> dict:
    """Tiles for ``t`` tokens, ``o`` outputs and ``j`` slices: up to 16 tokens 16 x 64 with the
    slices split until about 4 programs per SM (at least 8 slices each); above, 64 x 128 unsplit.
    From ``benchmarks/int_product_tiles.py`` on an H100 (docs/act_quant.md): above 16 tokens
    64 x 128 beat the other settings by 1.5-3x; at 1 and 16 tokens the timings were noisy and
    no setting was best on every shape, so the first setting stays."""
    if t <= 16:
        block_t, block_o = 16, 64
    else:
        block_t, block_o = 64, 128
    tiles = triton.cdiv(t, block_t) * triton.cdiv(o, block_o)
    split = 1
    while t <= 16 and tiles * split < 4 * sms and j // (split * 2) >= 8:
        split *= 2
    return {"block_t": block_t, "block_o": block_o, "split": split, "warps": 4}


def int_product_kernel(xp: torch.Tensor, xg: torch.Tensor, wp: torch.Tensor, wg: torch.Tensor, s: int,
                       config: dict | None = None) -> torch.Tensor:
    """``y [T, O]`` float32 of int8 points ``xp [T, N]``, ``wp [O, N]`` and float32 gains
    ``xg [T, N/s]``, ``wg [O, N/s]`` (all contiguous, on one device); ``config`` overrides
    :func:`int_product_config` (keys ``block_t``, ``block_o``, ``split``, ``warps``)."""
    t, n = xp.shape
    o = wp.shape[0]
    j = n // s
    cfg = int_product_config(t, o, j)
    cfg.update(config or {})
    jp = triton.cdiv(j, cfg["split"])
    split = triton.cdiv(j, jp)
    y = (torch.zeros if split > 1 else torch.empty)(t, o, dtype=torch.float32, device=xp.device)
    block_s = max(32, triton.next_power_of_2(s))  # int8 MMA tiles take k in steps of 32
    grid = (triton.cdiv(t, cfg["block_t"]), triton.cdiv(o, cfg["block_o"]), split)
    _int_product[grid](xp, xg, wp, wg, y, t, o, n, j, jp, s, BLOCK_T=cfg["block_t"], BLOCK_O=cfg["block_o"],
                       BLOCK_S=block_s, ATOMIC=split > 1, num_warps=cfg["warps"])
    return y
