"""Triton launches that skip Triton's JIT dispatch after a kernel's first launch of a specialization.

``kernel[grid](*args)`` binds the arguments, computes their specialization, hashes a cache key and checks the
kernel's globals on every call: on an H100 host, 39.5 us to launch the rows decode of a 7B layer, of which the
compiled kernel's own launcher takes 9.6 (``benchmarks/host_launch.py``, docs/kernels.md, session 27); a 7B
prefill launches 160 of them, and its 512-token forward is bound by the host (session 26).
:class:`StraightLauncher` launches through Triton's JIT the first time it meets a specialization and keeps the
compiled kernel Triton returns; later launches of that specialization call it directly
(``compiled[grid](*arguments)``, the launcher Triton itself ends in).

The specialization is what Triton's cache key reads of the arguments (Triton 3.x): each tensor's dtype and whether
its address is a multiple of 16, each integer's equality to 1, divisibility by 16 and 32-bit range, each bool,
None and constexpr by value, the launch options. A finer key is safe (one more compilation), a coarser one would
not be: the launcher keys on those and the device. Where no compiled kernel comes back (Triton's CPU interpreter)
or its launcher refuses the arguments (another Triton's convention), every launch goes through the JIT as before.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["StraightLauncher", "specialization"]

_INT32 = (-(2**31), 2**31)


def specialization(args: tuple) -> tuple:
    """What Triton's cache key reads of non-constexpr ``args`` (module docstring), as a hashable tuple."""
    key = []
    for a in args:
        if isinstance(a, torch.Tensor):
            key.append((a.dtype, a.data_ptr() % 16 == 0))
        elif isinstance(a, bool) or a is None:
            key.append(a)
        elif isinstance(a, int):
            key.append((a == 1, a % 16 == 0, _INT32[0] <= a < _INT32[1]))
        elif isinstance(a, float):
            key.append(float)
        else:
            key.append((type(a), a))
    return tuple(key)


class StraightLauncher:
    """Launches of one ``@triton.jit`` kernel: ``launcher(grid, *args, num_warps=4, **constexprs)`` is
    ``kernel[grid](*args, **constexprs, num_warps=num_warps)``, through the compiled kernel from a specialization's
    second launch on. ``args`` are the kernel's leading parameters in order, ``constexprs`` all the others by name.
    ``straight=False``: every launch through the JIT (what the benchmark compares against)."""

    def __init__(self, kernel, straight: bool = True):
        self.kernel = kernel
        params = getattr(kernel, "params", None)  # Triton's interpreter has no parameter list: always the JIT
        self._names = None if params is None or not straight else tuple(p.name for p in params)
        self._compiled: dict[tuple, Any] = {}  # specialization -> (compiled kernel, constexpr values) or None

    def __call__(self, grid: tuple, *args, num_warps: int = 4, **constexprs):
        if self._names is None:
            return self.kernel[grid](*args, **constexprs, num_warps=num_warps)
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
        key = (device, specialization(args), tuple(constexprs.items()), num_warps)
        entry = self._compiled.get(key, False)
        if entry:
            compiled, tail = entry
            try:
                return compiled[_three(grid)](*args, *tail)
            except (TypeError, IndexError, ValueError):  # another Triton's launcher convention: the JIT from now on
                self._compiled[key] = None
        compiled = self.kernel[grid](*args, **constexprs, num_warps=num_warps)
        if entry is False:
            self._compiled[key] = self._entry(compiled, len(args), constexprs)
        return compiled

    def _entry(self, compiled, positional: int, constexprs: dict):
        """(compiled kernel, the constexprs in parameter order), or None where it cannot be launched straight."""
        rest = self._names[positional:]
        if not hasattr(compiled, "__getitem__") or set(rest) != set(constexprs):
            return None
        return compiled, tuple(constexprs[n] for n in rest)


def _three(grid: tuple) -> tuple[int, int, int]:
    """A compiled kernel's grid has all three dimensions."""
    return (tuple(grid) + (1, 1))[:3]
