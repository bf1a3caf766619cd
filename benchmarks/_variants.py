"""Experiments' builds of ``pvq/kernels/csrc/leafrow8_gemv.cu`` for the benchmarks (``--rows-variant``).

``NAME:DEFINE[+DEFINE]`` builds the package's sources (leafrow8_gemv.cu and its parts, ``leafrow8_gemv.*.cu``) with
those defines (e.g. ``x:SOME_MACRO=1``; session 31 timed ``pdl:PVQ_PDL=1``, a define since made a run-time argument),
``NAME:@FILE[+FILE]`` other versions of them, built alone (together they define the host entry points of
``csrc/host_api.h``: one file before session 35, three since); :func:`variant_extension` routes the package's row
products through such a build inside a ``with`` block (this process only), so a benchmark can time the package's
product and an experiment's side by side in one run: how an experiment is kept or reverted.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from pvq.kernels import cuda_leaf
from pvq.kernels.cuda_build import bindings_of, load_cuda_extension, parts_of


def parse_variant(spec: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """``NAME:DEFINE[+DEFINE]`` -> (name, the package's sources, defines); ``NAME:@FILE[+FILE]`` -> (name, the files,
    ()): other versions of those sources (e.g. ``git show HEAD~1:pvq/kernels/csrc/leafrow8_gemv.cu``; the same
    functions). Raises ValueError saying what to write instead."""
    name, _, what = spec.partition(":")
    if not name.isidentifier() or not what or what == "@":
        raise ValueError(f"--rows-variant takes NAME:DEFINE[+DEFINE] (e.g. x:SOME_MACRO=1) or NAME:@FILE[+FILE], "
                         f"got {spec!r}")
    if what.startswith("@"):
        sources = tuple(os.path.abspath(f) for f in what[1:].split("+"))
        for source in sources:
            if not os.path.isfile(source):
                raise ValueError(f"--rows-variant {spec!r}: no file {source}")
        return name, sources, ()
    return name, (cuda_leaf._ROWS_SOURCE, *parts_of(cuda_leaf._ROWS_SOURCE)), tuple(what.split("+"))


def build_variant(spec: str):
    """(name, the extension built from :func:`parse_variant`'s sources and defines, or None where it fails), bound
    by the package's ``leafrow8_gemv_bind.cpp``."""
    name, sources, defines = parse_variant(spec)
    return name, load_cuda_extension(f"pvq_leafrow8_gemv_{name}", sources[0], "the variant is not timed", defines,
                                     bindings=bindings_of(cuda_leaf._ROWS_SOURCE), parts=list(sources[1:]))


@contextmanager
def variant_extension(ext):
    """The package's row products run through ``ext`` (an experiment's build) inside the block."""
    saved = cuda_leaf._rows_extension
    cuda_leaf._rows_extension = lambda: ext
    try:
        yield
    finally:
        cuda_leaf._rows_extension = saved
