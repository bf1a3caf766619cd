"""The product of one to eight input rows of D = 8 PVQ layers in the leaf-pair layout, as a CUDA kernel
(optional: nvcc and ninja).

:func:`leaf_gemv_cuda` computes ``x @ Q'^T`` from a :class:`~pvq.kernels.leaf_layout.LeafRuntime` (the
codes transcoded at load: per vector the two P(4, k) leaf rows and the gain as bit fields, no division
and no search), with the leaf table in shared memory and each warp's slice of x in registers, as the
split-order kernel (:mod:`pvq.kernels.cuda_split`) does. Source: ``pvq/kernels/csrc/leaf8_gemv.cu``.
Plain reference: :func:`~pvq.kernels.leaf_layout.leaf_decode_reference` (the same float32 weights). CI
has no GPU: the kernel's tests run on CUDA machines only; the layout's are exact on the CPU.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch

from pvq.models.backends import programmatic_launch_wanted

from .cuda_build import CSRC, cuda_build_available, load_cuda_extension
from .leaf_layout import LeafRuntime, leaf_decode_reference, leaf_layout_supports
from .leaf_rows import LeafRowsRuntime, leaf_rows_decode_reference, leaf_rows_supports, point_rows_supports

__all__ = ["LEAF_ROWS_SHARED_BYTES", "cuda_leaf_rows_supports", "cuda_point_rows_supports", "leaf_rows_decode",
           "leaf_rows_gemv_cuda",
           "LEAF_EIGHT_ROWS_MAX_IN_FEATURES", "LEAF_KERNEL_ROWS", "LEAF_LAUNCH_ROWS", "LEAF_MAX_IN_FEATURES", "LEAF_MAX_ROWS",
           "LEAF_ROWS_MAX_IN_FEATURES", "MMA_CHUNK_IN_FEATURES", "MMA_GLOBAL_X_MAX_ROW_GROUPS_A_BLOCK", "MMA_MIN_ROWS",
           "mma_reads_x_from_global", "MMA_STAGE_BYTES", "quad_reads_x_from_global", "cuda_leaf_supports", "leaf_decode", "leaf_gemv_cuda"]

_SOURCE = os.path.join(CSRC, "leaf8_gemv.cu")
_ROWS_SOURCE = os.path.join(CSRC, "leafrow8_gemv.cu")
_ROWS_FIELDS = ((2, 30), (1, 22), (1, 26), (1, 18))  # (gain bits, F) the row-interleaved kernel is built for
_POINT_LEVELS = (2,)  # gain levels of its whole-point instances
_LEVELS = (2, 4, 8, 16)
_DECODE_CHUNK = 1 << 24  # weights decoded at a time (int64 temporaries)

LEAF_MAX_ROWS = 16
"""Input rows one call multiplies (in launches of at most eight; more: the whole-layer decode and one matmul)."""
LEAF_KERNEL_ROWS = 8
"""Input rows one launch multiplies."""
LEAF_MAX_IN_FEATURES = 32768
"""Widest input of one row (32 warps of four vectors a lane)."""
LEAF_ROWS_MAX_IN_FEATURES = 16384
"""Widest input of two to four rows (32 warps of two vectors a lane)."""
LEAF_LAUNCH_ROWS = 4
"""Rows a launch takes where eight do not fit its registers."""
LEAF_EIGHT_ROWS_MAX_IN_FEATURES = 8192
"""Widest input of an eight-row launch (one vector a lane)."""


def cuda_leaf_supports(codec) -> bool:
    """Whether this machine compiles the kernel and the codec's codes transcode to the leaf-pair layout."""
    return leaf_layout_supports(codec) and codec.gain.num_levels in _LEVELS and cuda_build_available()


@lru_cache(maxsize=None)
def _extension():
    """The compiled module, or None (with a warning, once per process) where the build fails."""
    return load_cuda_extension("pvq_leaf8_gemv", _SOURCE,
                               "leaf-pair layers multiply through their PyTorch decode instead")


def leaf_decode(rt: LeafRuntime, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``Q'`` ``[out, in]`` in ``dtype`` on the layer's device, the reference's float32 operations in chunks of
    rows (what the backend runs above :data:`LEAF_MAX_ROWS` input rows, then one matmul)."""
    out = torch.empty(rt.out_features, rt.in_features, dtype=dtype, device=rt.words.device)
    step = max(1, _DECODE_CHUNK // rt.in_features)
    for r0 in range(0, rt.out_features, step):
        r1 = min(rt.out_features, r0 + step)
        out[r0:r1] = leaf_decode_reference(rt, (r0, r1))
    return out


def leaf_gemv_cuda(rt: LeafRuntime, x: torch.Tensor) -> torch.Tensor:
    """``x @ Q'^T`` ``[B, out]`` in ``x``'s dtype for ``x: [B <= 16, in]`` on the layer's CUDA device (fp16,
    bf16, or one row of fp32). Several 16-bit rows are decoded once for up to eight (four for inputs past
    8192) and multiplied by each, in as many launches as that takes; what the kernel does not take
    (wider inputs, several fp32 rows, no compiler) runs the whole-layer decode and one matmul."""
    if x.dim() != 2 or not 1 <= x.shape[0] <= LEAF_MAX_ROWS or x.shape[1] != rt.in_features or not x.is_cuda:
        raise ValueError(f"leaf_gemv_cuda takes x [B <= {LEAF_MAX_ROWS}, {rt.in_features}] on CUDA, got "
                         f"{tuple(x.shape)} on {x.device}")
    if rt.num_levels not in _LEVELS:
        raise ValueError(f"the leaf-pair kernel takes L in {_LEVELS}, got {rt.num_levels}")
    rows = x.shape[0]
    fits = rt.in_features <= LEAF_MAX_IN_FEATURES and rt.words.numel() < 1 << 31
    if rows > 1:
        fits = fits and x.dtype != torch.float32 and rt.in_features <= LEAF_ROWS_MAX_IN_FEATURES
    ext = _extension() if fits else None
    if ext is None:
        return (x.float() @ leaf_decode(rt).T).to(x.dtype)
    step = LEAF_KERNEL_ROWS if rt.in_features <= LEAF_EIGHT_ROWS_MAX_IN_FEATURES else LEAF_LAUNCH_ROWS
    if rows <= step:
        return _launch(ext, rt, x)
    return torch.cat([_launch(ext, rt, x[r:r + step]) for r in range(0, rows, step)])


def _launch(ext, rt: LeafRuntime, x: torch.Tensor) -> torch.Tensor:
    return ext.leaf8_gemv(rt.words, rt.row_words, rt.scales, rt.levels, rt.leaves, rt.inverse_norms,
                          x.contiguous(), rt.out_features, rt.field_bits, rt.leaf_bits, rt.group_size)


# ------------------------------------------------ the row-interleaved layout (leafrow8_gemv.cu and its parts)

LEAF_ROWS_SHARED_BYTES = 220 * 1024
"""Shared memory a launch of the row-interleaved kernel may take (x / 16 of its rows, the leaves, the partial
sums; the device allows 227 KB): inputs too wide for eight rows take launches of four, then one."""


def cuda_leaf_rows_supports(codec) -> bool:
    """Whether this machine compiles the row-interleaved kernel and the codec's layers take its layout."""
    from .leaf_rows import even_field_bits

    if not leaf_rows_supports(codec) or codec.gain.num_levels not in _LEVELS:
        return False
    width, _, lg = even_field_bits(codec.pulses, codec.gain.num_levels)
    return (lg, width) in _ROWS_FIELDS and cuda_build_available()


def cuda_point_rows_supports(codec) -> bool:
    """Whether this machine compiles the row-interleaved kernel and the codec's layers take its whole-point form
    (:func:`~pvq.kernels.leaf_rows.point_rows_supports`; the kernel is built for 2 gain levels)."""
    return point_rows_supports(codec) and codec.gain.num_levels in _POINT_LEVELS and cuda_build_available()


@lru_cache(maxsize=None)
def _rows_extension():
    return load_cuda_extension("pvq_leafrow8_gemv", _ROWS_SOURCE,
                               "row-interleaved leaf layers multiply through their PyTorch decode instead")


def leaf_rows_decode(rt: LeafRowsRuntime, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``Q'`` ``[out, in]`` in ``dtype`` on the layer's device: on CUDA the Triton decode
    (:func:`pvq.kernels.triton_rows.leaf_rows_decode_triton`: the reference's float32 operations, rounded to ``dtype``
    once; it replaced a CUDA decode on the H200: 11008x4096 to fp16 33.7 us against 76.7, docs/kernels.md session 18),
    else the reference in chunks of row groups. A 16-bit ``dtype`` writes half the bytes that the float32 decode and a
    conversion would."""
    if rt.words.is_cuda:
        from .triton_rows import leaf_rows_decode_triton

        return leaf_rows_decode_triton(rt, dtype)
    out = torch.empty(rt.out_features, rt.in_features, dtype=dtype, device=rt.words.device)
    step = max(32, _DECODE_CHUNK // rt.in_features // 32 * 32)
    for r0 in range(0, rt.out_features, step):
        r1 = min(rt.out_features, r0 + step)
        out[r0:r1] = leaf_rows_decode_reference(rt, (r0, r1))
    return out


def _rows_launch_rows(rt: LeafRowsRuntime) -> int:
    """The most input rows (8, 4 or 1) whose x / 16 fits one launch's shared memory beside the leaves."""
    leaves = 4 * rt.leaves.numel() + 4 * 16
    for rows in (8, 4, 1):
        if rt.in_features * 2 * rows + leaves + 4 * 32 * (32 * rows + (rows == 1)) <= LEAF_ROWS_SHARED_BYTES:
            return rows
    return 0


MMA_STAGE_BYTES = 32 * 1024
"""Shared memory counted for the tensor-core launch's per-warp stages (two decoded vectors of 32 rows a warp): the
stages of 32 warps. Since session 24 the kernel runs 16 warps and takes 16 KB; the routing still counts 32 KB, as it
was measured and tested on the GPU (counting less would give x more room in some launches: for a GPU session)."""


MMA_CHUNK_IN_FEATURES = 32 * 16 * 8
"""Inputs of the smallest chunk of x the tensor-core kernel stages at a time (32 steps of 16 vectors: each warp
keeps its steps); wider inputs whose x does not fit shared memory whole go in chunks (one launch)."""


def _mma_launch_rows(rt: LeafRowsRuntime, x_from_global: bool = False) -> int:
    """The most input rows (<= 16) one tensor-core launch takes: x / 16, whole or in chunks of
    :data:`MMA_CHUNK_IN_FEATURES` inputs, beside the leaves and the stages in shared memory; with x read from
    global memory, 16 where the leaves and the stages fit."""
    free = LEAF_ROWS_SHARED_BYTES - 4 * rt.leaves.numel() - 4 * 16 - MMA_STAGE_BYTES
    if x_from_global:
        return LEAF_MAX_ROWS if free >= 0 else 0
    return max(0, min(LEAF_MAX_ROWS, free // (2 * min(rt.in_features, MMA_CHUNK_IN_FEATURES))))


MMA_GLOBAL_X_MAX_ROW_GROUPS_A_BLOCK = 1
"""Row groups (32 output rows) a block of the tensor-core kernel may take for it to read x from global memory rather
than stage it in shared memory (one block an SM). One: each block then reads x once, and skips the copy and its
barrier; with three row groups a block the staged copy was faster (H200, session 15:
docs/bench/speed_layout_s15_h200.txt)."""


def mma_reads_x_from_global(row_groups: int, multiprocessors: int) -> bool:
    """Whether the tensor-core kernel reads x from global memory for a layer of ``row_groups`` row groups on a
    device of ``multiprocessors`` SMs (its grid: one block an SM, each over a contiguous range of row groups)."""
    if row_groups < 1 or multiprocessors < 1:
        raise ValueError(f"row groups and multiprocessors must be positive, got {row_groups}, {multiprocessors}")
    groups_a_block = -(-row_groups // min(multiprocessors, row_groups))
    return groups_a_block <= MMA_GLOBAL_X_MAX_ROW_GROUPS_A_BLOCK


@lru_cache(maxsize=None)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


MMA_MIN_ROWS = 5
"""Input rows from which the tensor-core kernel multiplies (fewer: the multiply-add kernel). Measured on an
H200 (session 13, docs/bench/speed_layout_s13_h200.txt)."""


def leaf_rows_gemv_cuda(rt: LeafRowsRuntime, x: torch.Tensor, tensor_cores: bool | None = None,
                        x_from_global: bool | None = None, programmatic: bool | None = None) -> torch.Tensor:
    """``x @ Q'^T`` ``[B, out]`` in ``x``'s dtype for ``x: [B <= 16, in]`` (fp16 / bf16; on the layer's CUDA
    device). One row: the multiply-add kernel. Two to sixteen: on tensor cores where ``tensor_cores`` (default:
    from :data:`MMA_MIN_ROWS` rows; each vector decoded once a launch; x read from global memory where
    ``x_from_global`` (default: :func:`mma_reads_x_from_global`), else staged whole or in chunks of steps, as many
    rows a launch as shared memory holds, split evenly), else launches of up to eight rows of the multiply-add
    kernel. float32 inputs, inputs too wide for shared memory or no compiler: the whole-layer decode and one
    matmul. A layer in the quad order (``rt.quad_swapped``) runs its own tensor-core kernel for 1 to 16 rows
    (:func:`_quad_product`; ``tensor_cores`` is ignored). ``programmatic``: each launch a programmatic dependent
    launch on sm_90 and later (default: inside :func:`~pvq.models.backends.programmatic_launches`; the products
    are the same either way)."""
    if x.dim() != 2 or not 1 <= x.shape[0] <= LEAF_MAX_ROWS or x.shape[1] != rt.in_features or not x.is_cuda:
        raise ValueError(f"leaf_rows_gemv_cuda takes x [B <= {LEAF_MAX_ROWS}, {rt.in_features}] on CUDA, got "
                         f"{tuple(x.shape)} on {x.device}")
    rows = x.shape[0]
    if programmatic is None:
        programmatic = programmatic_launch_wanted()
    if rt.quad_swapped:
        return _quad_product(rt, x, x_from_global, tensor_cores, programmatic)
    if tensor_cores is None:
        tensor_cores = rows >= MMA_MIN_ROWS
    if x_from_global is None:
        device = x.device.index if x.device.index is not None else torch.cuda.current_device()
        x_from_global = mma_reads_x_from_global(-(-rt.out_features // 32), _multiprocessors(device))
    mma = tensor_cores and rows > 1 and _mma_launch_rows(rt, x_from_global) > 0
    step = _mma_launch_rows(rt, x_from_global) if mma else _rows_launch_rows(rt)
    ext = _rows_extension() if x.dtype != torch.float32 and step else None
    if ext is None:
        return (x.float() @ leaf_rows_decode(rt).T).to(x.dtype)
    x = x.contiguous()
    if mma:
        launches = -(-rows // step)
        step = -(-rows // launches)  # even launches: 11 rows of at most 8 a launch go as 6 + 5
        def run(*args):
            return ext.leafrow8_gemv_mma(*args, x_from_global, programmatic)
    else:
        def run(*args):
            return ext.leafrow8_gemv(*args, programmatic)
    parts = [run(rt.words, rt.row_scales, rt.levels, rt.leaves, x[r:r + step], rt.out_features, rt.field_bits,
                 rt.gain_bits, rt.whole_points) for r in range(0, rows, step)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def quad_reads_x_from_global(rt: LeafRowsRuntime, rows: int, multiprocessors: int) -> bool:
    """Whether the quad-order tensor-core kernel reads x from global memory: everywhere but leaf pairs at up to 8 rows
    over several row groups a block whose x / 16 fits shared memory beside the leaves and the partial sums. H100,
    session 29 (docs/bench/quads_s29_h100.txt): 11008x4096 at 3 bits, 2 to 8 rows, staged 17.3-18.0 us against
    18.2-18.4 from global memory; elsewhere global memory as fast or faster (16 rows 21.2 against 23.3; whole points
    at 2 rows 14.3 against 15.3; 4096x4096, one row group a block, at 16 rows 8.9 against 13.3)."""
    if rows > 8 or rt.whole_points or mma_reads_x_from_global(-(-rt.out_features // 32), multiprocessors):
        return True
    return 2 * rt.in_features * 8 + _quad_fixed_bytes(rt) > LEAF_ROWS_SHARED_BYTES


def _quad_fixed_bytes(rt: LeafRowsRuntime) -> int:
    """Shared memory the quad-order tensor-core kernel takes beside x / 16: the leaves, the levels and its warps'
    partial sums (kStageBytes: 16 KB, half of :data:`MMA_STAGE_BYTES`)."""
    return 4 * rt.leaves.numel() + 4 * 16 + MMA_STAGE_BYTES // 2


def _quad_product(rt: LeafRowsRuntime, x: torch.Tensor, x_from_global: bool | None,
                  tensor_cores: bool | None = None, programmatic: bool = False) -> torch.Tensor:
    """``x @ Q'^T`` of a layer in the quad order (:func:`leaf_rows_gemv_cuda`): one row by the multiply-add kernel
    (unless ``tensor_cores``), else one launch of ``leafrow8_quad_mma_kernel`` (1 to 16 rows of fp16 / bf16), x read
    from global memory where ``x_from_global`` (default: :func:`quad_reads_x_from_global`); float32 inputs or no
    compiler: the whole-layer decode and a matmul."""
    ext = _rows_extension() if x.dtype != torch.float32 else None
    if ext is None or _quad_fixed_bytes(rt) > LEAF_ROWS_SHARED_BYTES:
        return (x.float() @ leaf_rows_decode(rt).T).to(x.dtype)
    if x.shape[0] == 1 and not tensor_cores and _rows_launch_rows(rt) >= 1:
        return ext.leafrow8_gemv_quad_one(rt.words, rt.row_scales, rt.levels, rt.leaves, x.contiguous(),
                                          rt.out_features, rt.field_bits, rt.gain_bits, rt.whole_points, programmatic)
    if x_from_global is None:
        device = x.device.index if x.device.index is not None else torch.cuda.current_device()
        x_from_global = quad_reads_x_from_global(rt, x.shape[0], _multiprocessors(device))
    return ext.leafrow8_gemv_quad_mma(rt.words, rt.row_scales, rt.levels, rt.leaves, x.contiguous(), rt.out_features,
                                      rt.field_bits, rt.gain_bits, rt.whole_points, x_from_global, programmatic)
