"""Codecs: pure tensor math that turns vectors [n, D] into codes and back.

Importing this package registers every codec family in :data:`CODECS`.
"""

from . import activation, aqlm, coded, ecsq, gain, gptvq, kmeans, lattice, packing, pyramid, scalar, trellis, voronoi, vptq  # noqa: F401  (registration)
from .base import (
    CODEC_CLASSES,
    CODECS,
    SCALE_KEY,
    CodecError,
    CodecOption,
    CodecSpec,
    Codes,
    GroupedResult,
    Stored,
    VectorCodec,
    codec_from_config,
    codec_to_config,
    make_codec,
    quantize_grouped,
    register_codec,
)

__all__ = [
    "CODEC_CLASSES",
    "CODECS",
    "SCALE_KEY",
    "codec_from_config",
    "codec_to_config",
    "CodecError",
    "CodecOption",
    "CodecSpec",
    "Codes",
    "GroupedResult",
    "Stored",
    "VectorCodec",
    "make_codec",
    "quantize_grouped",
    "register_codec",
]
