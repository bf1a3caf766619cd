"""Compiling the CUDA kernels of ``pvq/kernels/csrc`` on first use (optional: nvcc and ninja).

Each kernel module asks :func:`load_cuda_extension` for its compiled module; a build that fails
(compiler, toolkit, driver) warns once and returns None, and the caller runs its Triton or
PyTorch path instead. CI has no GPU: the kernels' tests run on CUDA machines only.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from functools import lru_cache

import torch

__all__ = ["CSRC", "StatusExtension", "bindings_of", "cuda_build_available", "is_part", "load_cuda_extension", "parts_of"]

CSRC = os.path.join(os.path.dirname(__file__), "csrc")
"""Where the CUDA sources (and their shared header ``dtype.cuh``) live."""


@lru_cache(maxsize=1)
def cuda_build_available() -> bool:
    """A CUDA device, nvcc (``CUDA_HOME``) and ninja: what compiling a kernel needs. Asked once a process: the
    answer looks for ninja on the file system, which took about 100 us a call, and every forward of a quantized
    layer asks it (a 7B model's 512-token prefill spent more time launching than computing: docs/kernels.md,
    session 26)."""
    if not torch.cuda.is_available() or importlib.util.find_spec("ninja") is None:
        return False
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME is not None


def bindings_of(path: str) -> str:
    """The C++ file that binds the CUDA source ``path`` (``x.cu``: ``x_bind.cpp`` in :data:`CSRC`)."""
    return os.path.join(CSRC, os.path.basename(path)[: -len(".cu")] + "_bind.cpp")


def is_part(path: str) -> bool:
    """Whether the CUDA source ``path`` is a part of another's extension (``x.part.cu``, no bindings of its own) rather
    than an extension's first source (``x.cu``)."""
    return "." in os.path.basename(path)[: -len(".cu")]


def parts_of(path: str) -> list[str]:
    """The other CUDA sources of ``x.cu``'s extension, ``x.*.cu`` in :data:`CSRC` (sorted): one extension's kernels
    split into several sources so that ninja compiles them side by side (leafrow8_gemv.cu's three: nvcc had spent
    93 of its 123 s in cicc on 130 kernel instances, session 35). Only ``x.cu`` has bindings."""
    stem = os.path.basename(path)[: -len(".cu")]
    return sorted(os.path.join(CSRC, f) for f in os.listdir(CSRC)
                  if f.startswith(stem + ".") and f.endswith(".cu") and is_part(f))


class StatusExtension:
    """A compiled extension whose functions return ``(result, message)`` (``csrc/bind_status.h``), seen as one
    whose functions return ``result`` and raise ``RuntimeError(message)`` when the message is not empty: no C++
    exception leaves the extension (one that did killed the H200 machine's processes, ``csrc/host_status.h``)."""

    def __init__(self, module):
        self.module = module

    def __getattr__(self, name: str):
        fn = getattr(self.module, name)

        def call(*args):
            result, message = fn(*args)
            if message:
                raise RuntimeError(message)
            return result

        call.__name__ = call.__qualname__ = name
        call.__doc__ = fn.__doc__
        setattr(self, name, call)  # looked up once
        return call


def load_cuda_extension(name: str, path: str, instead: str, defines: tuple[str, ...] = (),
                        bindings: str | None = None, parts: list[str] | None = None) -> StatusExtension | None:
    """The module compiled from the CUDA source ``path``, its other sources (``parts``, default :func:`parts_of`)
    and its Python bindings (``bindings``, default :func:`bindings_of`; C++ built by the C++ compiler, returning the
    host code's failed checks as values: ``csrc/bind_status.h``) as a :class:`StatusExtension`, or None (with a
    warning naming what runs ``instead``) where the build fails. Callers cache it (one build per process).
    ``defines`` (``"NAME=VALUE"``, every source) build an experiment's variant; give it its own ``name``."""
    from torch.utils.cpp_extension import load

    flags = ["-O3"] + [f"-D{d}" for d in defines]
    sources = [path, *(parts_of(path) if parts is None else parts), bindings or bindings_of(path)]
    try:
        return StatusExtension(load(name=name, sources=sources, extra_cflags=["-O3"], extra_cuda_cflags=flags,
                                    extra_include_paths=[CSRC], verbose=False))
    except Exception as e:  # noqa: BLE001 - a compiler, toolkit or driver problem of this machine
        warnings.warn(f"compiling {path} failed ({type(e).__name__}: {str(e)[:300]}); {instead}", RuntimeWarning,
                      stacklevel=3)
        return None
