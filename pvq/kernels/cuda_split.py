"""The split-PVQ product of one to eight input rows as a CUDA kernel with its decode tables in shared
memory (optional).

:func:`split_gemv_cuda` computes what :func:`~pvq.kernels.triton_split.split_matmul`
computes for D = 8, N(8, K) < 2^22 (1.5 to 3 bits), but reads the P(4, k) leaves, the split
table, the buckets, the inverse norms and the gain levels from shared memory (the Triton kernels
gather them through L1, one sector per thread: Nsight on an H100 counts two thirds of the sectors
excessive; Triton 3.6 has no indexed shared-memory gather), keeps each warp's slice of the input in
registers for the whole kernel, multiplies 16-bit inputs in half2 (float32 inputs in float32, bit for
bit the reference), and decodes each vector once for up to eight input rows. Source:
``pvq/kernels/csrc/split8_gemv.cu``, compiled on first use by
:mod:`pvq.kernels.cuda_build` (needs nvcc and ninja).
Plain reference: :func:`~pvq.kernels.split_runtime.split_decode_reference` (the same float32
weights). CI has no GPU: its tests run on CUDA machines only.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch

from .cuda_build import CSRC, cuda_build_available, load_cuda_extension
from .split_lean import bucket_shift, lean_codec_supported, lean_supported, lean_tables
from .split_runtime import SplitRuntime, shared_leaves, split_runtime_supports

__all__ = ["CUDA_EIGHT_ROWS_MAX_IN_FEATURES", "CUDA_LAUNCH_ROWS", "CUDA_LEVELS", "CUDA_MAX_IN_FEATURES", "CUDA_MAX_ROWS",
           "CUDA_ROWS_MAX_IN_FEATURES", "cuda_split_supports", "division_magic", "pair_table", "split_gemv_cuda"]

CUDA_LEVELS = (2, 4, 8, 16)
"""Gain level counts the kernel is instantiated for (``L`` is a template parameter)."""

_SOURCE = os.path.join(CSRC, "split8_gemv.cu")


def cuda_split_supports(codec) -> bool:
    """Whether this machine compiles the kernel and it decodes this codec's codes (split order, D = 8,
    N(8, K) < 2^22, L in 2, 4, 8, 16)."""
    return (split_runtime_supports(codec) and codec.gain.num_levels in CUDA_LEVELS and lean_codec_supported(codec)
            and cuda_build_available())


@lru_cache(maxsize=None)
def _extension():
    """The compiled module, or None (with a warning, once per process) where the build fails: the
    layers then run the Triton kernel."""
    return load_cuda_extension("pvq_split8_gemv", _SOURCE,
                               "one-row products of D = 8 PVQ layers run the Triton kernel instead")


CUDA_MAX_IN_FEATURES = 32768
"""Widest input the kernel takes (32 warps of 4 vectors a lane cover a row); wider rows run the
Triton kernel."""


@lru_cache(maxsize=None)
def _buckets32(pulses: int, device: str) -> torch.Tensor:
    """The bucket table as int32 ``S_8(K, j0 + 1) << 5 | j0`` (S < 2^22, j0 <= K < 32): one 4-byte
    shared-memory read a vector instead of eight."""
    buckets, _, _ = lean_tables(pulses, "cpu")
    packed = ((buckets >> 32) << 5) | (buckets & 0xFFFFFFFF)
    return packed.to(torch.int32).to(device)


def division_magic(divisor: int) -> int:
    """M = ceil(2^31 / divisor) (< 2^32 for divisor >= 1), with ``floor(n / divisor) == (2 n M) >> 32`` for every
    dividend the kernel divides: n < N(4, j) N(4, K - j) for K <= 13 (Granlund and Montgomery's bound
    does not cover them all; the tests check each exhaustively)."""
    return -(-(1 << 31) // divisor)


@lru_cache(maxsize=None)
def pair_table(pulses: int, device: str) -> torch.Tensor:
    """int32 ``[K + 1, 4]`` for the first half's pulses j: ``S_8(K, j)``, divisor ``d = N(4, K - j)``, its
    multiplier :func:`division_magic`, ``leaf_offset[j] | leaf_offset[K - j] << 16`` (from
    :func:`~pvq.kernels.split_lean.lean_tables`); the kernel lays them out by byte addresses."""
    _, pair, _ = lean_tables(pulses, "cpu")
    base, div, offs = pair[:, 0] & 0xFFFFFFFF, pair[:, 0] >> 32, pair[:, 1] >> 32
    m = torch.tensor([division_magic(int(d)) for d in div], dtype=torch.int64)
    rows = torch.stack([base, div, m, offs], 1)
    return torch.where(rows >= 1 << 31, rows - (1 << 32), rows).to(torch.int32).contiguous().to(device)


CUDA_MAX_ROWS = 8
"""Input rows the kernel multiplies (16-bit inputs of at most :data:`CUDA_ROWS_MAX_IN_FEATURES`; each
vector is decoded once for up to :data:`CUDA_LAUNCH_ROWS` rows, or up to eight of at most
:data:`CUDA_EIGHT_ROWS_MAX_IN_FEATURES` inputs: wider ones take two launches)."""
CUDA_ROWS_MAX_IN_FEATURES = 16384
"""Widest input the several-row kernel takes (32 warps of two vectors a lane: x's registers times the rows)."""
CUDA_LAUNCH_ROWS = 4
"""Rows one launch takes where eight do not fit the registers (inputs past :data:`CUDA_EIGHT_ROWS_MAX_IN_FEATURES`)."""
CUDA_EIGHT_ROWS_MAX_IN_FEATURES = 8192
"""Widest input of an eight-row launch (one vector a lane: 32 registers of x)."""


def split_gemv_cuda(rt: SplitRuntime, x: torch.Tensor) -> torch.Tensor:
    """``x @ Q'^T`` ``[B, out]`` in ``x``'s dtype (float32 sums rounded once: what the layer casts the
    other kernels' float32 results to, without a cast kernel) for ``x: [B, in]``, B <= :data:`CUDA_MAX_ROWS`
    (fp16, bf16 or fp32, on the layer's CUDA device) of a layer :func:`~pvq.kernels.split_lean.lean_supported`
    takes. Several rows of fp16/bf16 are decoded once and multiplied by each; what the kernel does not take
    (rows wider than :data:`CUDA_MAX_IN_FEATURES`, or than :data:`CUDA_ROWS_MAX_IN_FEATURES` with several rows;
    several float32 rows) runs the Triton kernel (one row) or its whole-layer decode and one matmul."""
    if not lean_supported(rt) or rt.num_levels not in CUDA_LEVELS:
        raise ValueError(f"the CUDA split kernel takes D = 8 layers with N(8, K) < 2^22 and L in 2, 4, 8, 16; "
                         f"got D={rt.dim}, K={rt.pulses}, L={rt.num_levels} (use split_matmul)")
    if x.dim() != 2 or not 1 <= x.shape[0] <= CUDA_MAX_ROWS or x.shape[1] != rt.in_features or not x.is_cuda:
        raise ValueError(f"split_gemv_cuda takes x [B <= {CUDA_MAX_ROWS}, {rt.in_features}] on CUDA, got "
                         f"{tuple(x.shape)} on {x.device}")
    rows = x.shape[0]
    fits = rt.in_features <= CUDA_MAX_IN_FEATURES and rt.words.numel() < 1 << 27  # 32-bit bit addresses
    if rows > 1:
        fits = fits and x.dtype != torch.float32 and rt.in_features <= CUDA_ROWS_MAX_IN_FEATURES
    ext = _extension() if fits else None
    if ext is None:
        from .triton_split import split_decode, split_matmul

        if rows == 1:
            return split_matmul(rt, x).to(x.dtype)
        return x @ split_decode(rt).to(x.dtype).T
    if rows > CUDA_LAUNCH_ROWS and (rt.in_features > CUDA_EIGHT_ROWS_MAX_IN_FEATURES or not _eight_rows_fit(rt, x)):
        return torch.cat([_launch(ext, rt, x[:CUDA_LAUNCH_ROWS]), _launch(ext, rt, x[CUDA_LAUNCH_ROWS:])])
    return _launch(ext, rt, x)


_SHARED_LIMIT = 227 * 1024  # dynamic shared memory a block may take on sm_80 / sm_90


def _eight_rows_fit(rt: SplitRuntime, x: torch.Tensor) -> bool:
    """Whether an eight-row launch's shared memory fits: the kernel's partial sums grow with the rows a block
    owns (28672 x 8192 at eight rows needed about 275 KB and the launch failed with "invalid argument" on an
    H200, docs/kernels.md session 8). The launcher's layout (split8_gemv.cu): one vector a lane, S warps a row,
    32 / S row groups, a block per SM."""
    vpr = rt.in_features // 8
    warps = -(-vpr // 32)
    groups = max(1, 32 // warps)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    grid = max(1, min(sms, -(-rt.out_features // groups)))
    rows_per_block = -(-rt.out_features // grid)
    leaves, _ = shared_leaves(rt.pulses, str(rt.words.device))
    tables = 4 * (leaves.numel() + 8 * (rt.pulses + 2)) + 4 * (_buckets32(rt.pulses, str(rt.words.device)).numel()
                                                               + rt.inverse_norms.numel() + rt.num_levels + 4)
    return tables + 4 * warps * rows_per_block * CUDA_MAX_ROWS <= _SHARED_LIMIT


def _launch(ext, rt: SplitRuntime, x: torch.Tensor) -> torch.Tensor:
    dev = str(rt.words.device)
    leaves, _ = shared_leaves(rt.pulses, dev)
    return ext.split8_gemv(
        rt.words, rt.scales, rt.levels, _buckets32(rt.pulses, dev), pair_table(rt.pulses, dev), leaves,
        rt.inverse_norms, x.contiguous(), rt.out_features, rt.code_bits, rt.pulses, rt.group_size,
        bucket_shift(rt.pulses))
