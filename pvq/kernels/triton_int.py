"""Triton kernels of the integer product (:mod:`pvq.kernels.int_product`); importing it needs Triton.

Two kernels; :func:`int_product_config` picks one and its tiles:

* ``dot`` - per program a tile of ``BLOCK_T`` tokens x ``BLOCK_O`` outputs and a range of ``JP``
  slices. For each slice ``j`` of ``s`` inputs (``s`` padded to a power of two >= 32 with masked
  zeros), the int8 tiles of activation points ``[BLOCK_T, S]`` and weight points ``[S, BLOCK_O]``
  go through one ``tl.dot`` with int32 accumulation; the int32 tile is scaled by
  ``gx[t, j] * gw[o, j]`` in float32 and added to the float32 accumulator.
* ``gemv`` - one token: per program ``BLOCK_O`` rows and a range of slices, read ``JB`` slices at
  a time as ``[BLOCK_O, JB, S]`` int8 (each row's bytes contiguous), multiplied by the token's
  points and summed over the slice in int32 on the CUDA cores (no MMA tile of which 15 of 16
  rows are padding), then scaled and summed in float32. It reads each weight byte once; on an
  H100 it was still slower than ``dot`` with 16 x 128 tiles, so it runs only when forced.

Either splits the slices over ``grid[-1]`` programs whose float32 partial sums are added
atomically, so that a product of a few row tiles still fills the GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_kernels import input_split

__all__ = ["int_product_config", "int_product_kernel"]

GEMV_CHUNK = 256  # bytes of one weight row per step of the gemv kernel (JB slices of S)


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


@triton.jit
def _int_gemv(x_ptr, xg_ptr, w_ptr, wg_ptr, y_ptr, O, N, J, JP, S: tl.constexpr, SP: tl.constexpr,
              JB: tl.constexpr, BLOCK_O: tl.constexpr, ATOMIC: tl.constexpr):
    ro = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    mo = ro < O
    j0 = tl.program_id(1) * JP
    j1 = tl.minimum(j0 + JP, J)
    rj = tl.arange(0, JB)
    rs = tl.arange(0, SP)
    rows = ro.to(tl.int64)[:, None, None] * N
    acc = tl.zeros((BLOCK_O,), dtype=tl.float32)
    for jb in range(j0, j1, JB):
        js = jb + rj
        mj = js < j1
        col = js[:, None] * S + rs[None, :]  # [JB, SP] input columns
        mcol = mj[:, None] & (rs < S)[None, :]
        xv = tl.load(x_ptr + col, mask=mcol, other=0).to(tl.int32)
        wv = tl.load(w_ptr + rows + col[None, :, :], mask=mo[:, None, None] & mcol[None, :, :], other=0).to(tl.int32)
        d = tl.sum(wv * xv[None, :, :], axis=2)  # [BLOCK_O, JB] exact int32 dots
        gx = tl.load(xg_ptr + js, mask=mj, other=0.0)
        gw = tl.load(wg_ptr + ro.to(tl.int64)[:, None] * J + js[None, :], mask=mo[:, None] & mj[None, :], other=0.0)
        acc += tl.sum(d.to(tl.float32) * (gx[None, :] * gw), axis=1)
    if ATOMIC:
        tl.atomic_add(y_ptr + ro, acc, mask=mo)
    else:
        tl.store(y_ptr + ro, acc, mask=mo)


def int_product_config(t: int, o: int, j: int, s: int = 32, sms: int = 132, kernel: str | None = None) -> dict:
    """Kernel and tiles for ``t`` tokens, ``o`` outputs, ``j`` slices of ``s`` inputs (from
    ``benchmarks/int_product_tiles.py`` on an H100, docs/act_quant_speed_h100.md). One token: ``dot``
    with 16 x 128 tiles (in the one run that timed ``gemv`` beside it, 16 x 128 with the slices split
    to about 4 programs per SM took 51 and 40 us for 11008x4096 and 4096x4096, ``gemv``'s default
    204 and 92 and its best setting 95 and 26: noisy, but no ``gemv`` setting won on the larger
    shape). Up to 16 tokens: 16 x 64; above, 64 x 128 (it beat the other settings by 2.5-2.8x).
    Slices split until about 4 programs per SM. ``kernel`` forces ``dot`` or ``gemv`` (one token
    only: ``GEMV_CHUNK`` bytes of 16 rows per step, each weight byte read once)."""
    kernel = kernel or "dot"
    if kernel not in ("dot", "gemv"):
        raise ValueError(f"kernel must be 'dot' or 'gemv', got {kernel!r}")
    if kernel == "gemv":
        if t != 1:
            raise ValueError(f"the gemv kernel takes one token, got {t}")
        sp = triton.next_power_of_2(s)
        jb = max(1, GEMV_CHUNK // sp)
        return {"kernel": "gemv", "block_o": 16, "jb": jb, "warps": 4,
                "split": input_split(triton.cdiv(o, 16), j, jb, sms, per_sm=4)}
    block_t, block_o = (16, 128) if t == 1 else (16, 64) if t <= 16 else (64, 128)
    tiles = triton.cdiv(t, block_t) * triton.cdiv(o, block_o)
    split = input_split(tiles, j, 4, sms, per_sm=4) if t <= 16 else 1
    return {"kernel": "dot", "block_t": block_t, "block_o": block_o, "split": split, "warps": 4}


def int_product_kernel(xp: torch.Tensor, xg: torch.Tensor, wp: torch.Tensor, wg: torch.Tensor, s: int,
                       config: dict | None = None) -> torch.Tensor:
    """``y [T, O]`` float32 of int8 points ``xp [T, N]``, ``wp [O, N]`` and float32 gains
    ``xg [T, N/s]``, ``wg [O, N/s]`` (all contiguous, on one device); ``config`` overrides
    :func:`int_product_config` (keys ``kernel`` (``dot`` or ``gemv``: one token only), ``block_t``,
    ``block_o``, ``jb``, ``split``, ``warps``)."""
    t, n = xp.shape
    o = wp.shape[0]
    j = n // s
    config = config or {}
    cfg = {**int_product_config(t, o, j, s, kernel=config.get("kernel")), **config}
    jp = triton.cdiv(j, cfg["split"])
    split = triton.cdiv(j, jp)
    y = (torch.zeros if split > 1 else torch.empty)(t, o, dtype=torch.float32, device=xp.device)
    if cfg["kernel"] == "gemv":
        _int_gemv[(triton.cdiv(o, cfg["block_o"]), split)](
            xp, xg, wp, wg, y, o, n, j, jp, s, SP=triton.next_power_of_2(s), JB=cfg["jb"], BLOCK_O=cfg["block_o"],
            ATOMIC=split > 1, num_warps=cfg["warps"])
        return y
    block_s = max(32, triton.next_power_of_2(s))  # int8 MMA tiles take k in steps of 32
    grid = (triton.cdiv(t, cfg["block_t"]), triton.cdiv(o, cfg["block_o"]), split)
    _int_product[grid](xp, xg, wp, wg, y, t, o, n, j, jp, s, BLOCK_T=cfg["block_t"], BLOCK_O=cfg["block_o"],
                       BLOCK_S=block_s, ATOMIC=split > 1, num_warps=cfg["warps"])
    return y
