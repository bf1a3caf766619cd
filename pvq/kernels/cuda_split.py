"""The one-row split-PVQ product as a CUDA kernel with its decode tables in shared memory (optional).

:func:`split_gemv_cuda` computes what :func:`~pvq.kernels.triton_split_lean.split_gemv_lean`
computes (D = 8, N(8, K) < 2^22: 1.5 to 3 bits), but reads the P(4, k) leaves, the split
table, the buckets, the inverse norms and the gain levels from shared memory: the Triton kernels
gather them through L1, one sector per thread (Nsight on an H100: two thirds of the sectors
excessive), and Triton 3.6 has no indexed shared-memory gather. Source:
``pvq/kernels/csrc/split8_gemv.cu``, compiled on first use by
:func:`torch.utils.cpp_extension.load` (needs nvcc and ninja: :func:`cuda_split_available`).
Plain reference: :func:`~pvq.kernels.split_runtime.split_decode_reference` (the same float32
weights). CI has no GPU: its tests run on CUDA machines only.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from functools import lru_cache

import torch

from .split_lean import bucket_shift, lean_codec_supported, lean_supported, lean_tables
from .split_runtime import SplitRuntime, shared_leaves, split_runtime_supports

__all__ = ["CUDA_LEVELS", "cuda_split_available", "cuda_split_supports", "split_gemv_cuda"]

CUDA_LEVELS = (2, 4, 8, 16)
"""Gain level counts the kernel is instantiated for (``L`` is a template parameter)."""

_SOURCE = os.path.join(os.path.dirname(__file__), "csrc", "split8_gemv.cu")


def cuda_split_available() -> bool:
    """A CUDA device, nvcc (``CUDA_HOME``) and ninja: what compiling the kernel needs."""
    if not torch.cuda.is_available() or importlib.util.find_spec("ninja") is None:
        return False
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME is not None


def cuda_split_supports(codec) -> bool:
    """Whether this machine compiles the kernel and it decodes this codec's codes (split order, D = 8,
    N(8, K) < 2^22, L in 2, 4, 8, 16)."""
    return (split_runtime_supports(codec) and codec.gain.num_levels in CUDA_LEVELS and lean_codec_supported(codec)
            and cuda_split_available())


@lru_cache(maxsize=None)
def _extension():
    """The compiled module, or None (with a warning, once per process) where the build fails: the
    layers then run the Triton kernel."""
    from torch.utils.cpp_extension import load

    try:
        return load(name="pvq_split8_gemv", sources=[_SOURCE], extra_cuda_cflags=["-O3"], verbose=False)
    except Exception as e:  # noqa: BLE001 - a compiler, toolkit or driver problem of this machine
        warnings.warn(f"compiling {_SOURCE} failed ({type(e).__name__}: {str(e)[:300]}); one-row products "
                      f"of D = 8 PVQ layers run the Triton kernel instead", RuntimeWarning, stacklevel=2)
        return None


def split_gemv_cuda(rt: SplitRuntime, x: torch.Tensor, blocks_per_sm: int = 0) -> torch.Tensor:
    """``x @ Q'^T`` float32 ``[1, out]`` for ``x: [1, in]`` (fp16, bf16 or fp32, on the layer's CUDA
    device) of a layer :func:`~pvq.kernels.split_lean.lean_supported` takes; ``blocks_per_sm`` caps the
    resident blocks of 512 threads per SM (0: as many as fit)."""
    if not lean_supported(rt) or rt.num_levels not in CUDA_LEVELS:
        raise ValueError(f"the CUDA split kernel takes D = 8 layers with N(8, K) < 2^22 and L in 2, 4, 8, 16; "
                         f"got D={rt.dim}, K={rt.pulses}, L={rt.num_levels} (use split_matmul)")
    if x.dim() != 2 or tuple(x.shape) != (1, rt.in_features) or not x.is_cuda:
        raise ValueError(f"split_gemv_cuda takes x [1, {rt.in_features}] on CUDA, got {tuple(x.shape)} on {x.device}")
    ext = _extension()
    if ext is None:
        from .triton_split import split_matmul

        return split_matmul(rt, x)
    dev = str(rt.words.device)
    buckets, pair, _ = lean_tables(rt.pulses, dev)
    leaves, _ = shared_leaves(rt.pulses, dev)
    return ext.split8_gemv(
        rt.words, rt.scales, rt.levels, buckets, pair, leaves, rt.inverse_norms, x.contiguous(), rt.out_features,
        rt.code_bits, rt.pulses, rt.group_size, bucket_shift(rt.pulses), blocks_per_sm)
