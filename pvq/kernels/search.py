"""The weight search's fast paths, registered with :data:`pvq.codecs.pyramid_search.FILL_KERNELS`.

On a machine with CUDA and Triton, the solver's greedy fill on CUDA tensors runs
:func:`pvq.kernels.triton_search.greedy_fill_triton` (one launch per column block instead of about
14 per pulse); elsewhere nothing is registered and the PyTorch loop runs. Both give the same points,
bit for bit (tests/kernels/test_triton_search.py).
"""

from __future__ import annotations

import torch

from pvq.codecs.pyramid_search import FILL_KERNELS

from .availability import triton_available

__all__ = ["register_search_kernels"]


def _fill_cuda(ax, y, xy, yy, left):
    from .triton_search import greedy_fill_triton

    return greedy_fill_triton(ax, y, xy, yy, left)


def register_search_kernels() -> list[str]:
    """Register the fills this machine can run; returns their device types."""
    if triton_available() and torch.cuda.is_available():
        FILL_KERNELS.setdefault("cuda", _fill_cuda)
    return sorted(FILL_KERNELS)
