"""Codecs: pure tensor math that turns vectors [n, D] into codes and back.

Importing this package registers every codec family in :data:`CODECS`.
"""

from . import gain, kmeans, lattice, packing, pyramid, scalar  # noqa: F401  (registration)
from .base import (
    CODECS,
    CodecError,
    Codes,
    GroupedResult,
    Stored,
    VectorCodec,
    make_codec,
    quantize_grouped,
    register_codec,
)

__all__ = [
    "CODECS",
    "CodecError",
    "Codes",
    "GroupedResult",
    "Stored",
    "VectorCodec",
    "make_codec",
    "quantize_grouped",
    "register_codec",
]
