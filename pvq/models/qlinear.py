"""The quantized linear layer: packed codes, fp16 scales and rotation descriptors.

A :class:`QuantizedLinear` replaces an ``nn.Linear`` of weight ``W: [out, in]``.
It stores exactly what the codec wrote for the rotated weight ``W' = U W V^T``
(``U``, ``V``: randomized Hadamard transforms of sizes ``out`` and ``in``, or
identities when the method does not rotate):

* ``packed_<key>``: the uint8 tensors of ``codec.pack`` (and any codebook),
* ``scales``: one fp16 scale per group of G vectors, row-major
  ``[out * in / (D * G)]`` (absent when the codec stores no scale),
* ``bias`` (a parameter, float) when the linear had one.

The rotations are stored as descriptors (size and seed of each side), not as
dense factors: :class:`~pvq.transforms.RandomizedHadamard` is rebuilt
deterministically from ``(n, seed)``. This keeps checkpoints small; the price is
that a size whose dense factor is a seeded random orthogonal matrix (no known
Hadamard order) depends on the platform's QR to the last bit.

``dequantize()`` gives ``U^T Q' V`` (original coordinates). ``forward`` uses a
dequantized weight built once and cached in a non-persistent buffer (dropped by
:meth:`clear_cache`), so evaluation on CPU runs at plain matmul speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pvq.codecs import VectorCodec, codec_from_config, codec_to_config
from pvq.transforms import RandomizedHadamard, unrotate_weight

from .methods import QuantizeError

__all__ = ["QuantizedLinear"]

SCALE_KEY = "scale"  # name of the scales in a codec's Stored tensors
PACKED_PREFIX = "packed_"

_DTYPES = {
    "uint8": torch.uint8, "int8": torch.int8, "int16": torch.int16, "int32": torch.int32,
    "int64": torch.int64, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float32": torch.float32, "float64": torch.float64,
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise QuantizeError(f"unsupported tensor dtype {name!r} in a quantized layer config")
    return _DTYPES[name]


def buffer_name(key: str) -> str:
    """Buffer holding the stored tensor ``key`` (``scale`` -> ``scales``, others ``packed_<key>``)."""
    return "scales" if key == SCALE_KEY else PACKED_PREFIX + key


class QuantizedLinear(nn.Module):
    """A linear layer whose weight is stored as codec codes (see the module docstring).

    in_features, out_features: the replaced layer's sizes.
    codec_config: :func:`pvq.codecs.codec_to_config` of the layer's codec.
    tensors: ``{stored key: (shape, dtype)}`` of the stored tensors (codec keys
        and ``"scale"``); buffers are created empty with these shapes.
    bias: whether the layer has a bias (a float parameter of ``bias_dtype``).
    rotation: ``{"out_seed": int, "in_seed": int}`` or None (no rotation).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        codec_config: dict,
        tensors: dict[str, tuple[tuple[int, ...], torch.dtype]],
        bias: bool = False,
        rotation: dict | None = None,
        bias_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.codec_config = dict(codec_config)
        with torch.device("cpu"):  # codec tables are host tensors even while transformers builds on "meta"
            self.codec: VectorCodec = codec_from_config(self.codec_config)
        d, g = self.codec.dim, self.codec.group_size
        if self.in_features % (d * g):
            raise QuantizeError(
                f"codec {self.codec.describe()} does not tile in_features={self.in_features} "
                f"(needs a multiple of D*G = {d * g})"
            )
        if rotation is not None:
            rotation = {"out_seed": int(rotation["out_seed"]), "in_seed": int(rotation["in_seed"])}
        self.rotation = rotation
        self.stored_keys = list(tensors)
        if self.codec.stores_scale and SCALE_KEY not in tensors:
            raise QuantizeError(f"codec {self.codec.name!r} stores scales but the layer has no {SCALE_KEY!r} tensor")
        for key, (shape, dtype) in tensors.items():
            self.register_buffer(buffer_name(key), torch.empty(tuple(shape), dtype=dtype, device=device))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, dtype=bias_dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.register_buffer("weight_cache", None, persistent=False)
        self._transforms: tuple | None = None

    # ------------------------------------------------------------ construction

    @classmethod
    def from_stored(
        cls,
        linear: nn.Linear,
        codec: VectorCodec,
        stored: dict[str, torch.Tensor],
        rotation: dict | None = None,
    ) -> QuantizedLinear:
        """The quantized replacement of ``linear`` from the codec's stored tensors
        (packed codes and ``"scale"``, e.g. ``LayerResult.stored(codec).tensors``)."""
        tensors = {k: (tuple(v.shape), v.dtype) for k, v in stored.items()}
        bias = linear.bias is not None
        dev = linear.weight.device
        q = cls(
            linear.in_features, linear.out_features, codec_to_config(codec), tensors, bias=bias,
            rotation=rotation, bias_dtype=linear.weight.dtype if bias else torch.float32, device=dev,
        )
        with torch.no_grad():
            for k, v in stored.items():
                getattr(q, buffer_name(k)).copy_(v)
            if bias:
                q.bias.copy_(linear.bias.detach())
        return q

    @classmethod
    def from_layer_config(
        cls, cfg: dict, bias_dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> QuantizedLinear:
        """Empty module (buffers unset) from :meth:`layer_config`, for checkpoint loading."""
        try:
            tensors = {
                k: (tuple(int(s) for s in v["shape"]), dtype_from_name(v["dtype"])) for k, v in cfg["tensors"].items()
            }
            return cls(
                cfg["in_features"], cfg["out_features"], cfg["codec"], tensors, bias=bool(cfg["bias"]),
                rotation=cfg.get("rotation"), bias_dtype=bias_dtype, device=device,
            )
        except KeyError as e:
            raise QuantizeError(f"quantized layer config lacks {e}; the checkpoint config is incomplete") from e

    def layer_config(self) -> dict:
        """JSON description that rebuilds this module's skeleton (for ``quantization_config``)."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "codec": dict(self.codec_config),
            "rotation": None if self.rotation is None else dict(self.rotation),
            "tensors": {
                k: {"shape": list(t.shape), "dtype": dtype_name(t.dtype)} for k, t in self.stored_tensors().items()
            },
            "bits_per_weight": self.bits_per_weight(),
        }

    # ------------------------------------------------------------ storage

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """The codec's stored tensors (packed codes, any codebook, ``"scale"``) by stored key."""
        return {k: getattr(self, buffer_name(k)) for k in self.stored_keys}

    @property
    def num_weights(self) -> int:
        return self.in_features * self.out_features

    def stored_bits(self) -> int:
        """Exact bits of codes, codebooks and scales: what replaces the weight."""
        return sum(t.numel() * t.element_size() * 8 for t in self.stored_tensors().values())

    def other_bits(self) -> int:
        """Bits of the tensors kept besides the weight's replacement (the bias)."""
        return 0 if self.bias is None else self.bias.numel() * self.bias.element_size() * 8

    def bits_per_weight(self) -> float:
        return self.stored_bits() / self.num_weights

    @property
    def num_vectors(self) -> int:
        return self.num_weights // self.codec.dim

    def codes(self):
        """Unpacked codes (the codec's :data:`~pvq.codecs.Codes`), ``out * in / D`` vectors row-major."""
        stored = {k: v for k, v in self.stored_tensors().items() if k != SCALE_KEY}
        return self.codec.unpack(stored, self.num_vectors)

    def per_vector_scales(self) -> torch.Tensor:
        if SCALE_KEY in self.stored_keys:
            return self.scales.float().repeat_interleave(self.codec.group_size)
        return torch.ones(self.num_vectors, device=self._buffer_device())

    def _buffer_device(self) -> torch.device:
        for t in self.stored_tensors().values():
            return t.device
        return torch.device("cpu")

    # ------------------------------------------------------------ weights

    def transforms(self) -> tuple[RandomizedHadamard | None, RandomizedHadamard | None]:
        """``(U, V)`` rebuilt from the seeds (None, None without rotation)."""
        if self.rotation is None:
            return None, None
        if self._transforms is None:
            self._transforms = (
                RandomizedHadamard(self.out_features, self.rotation["out_seed"]),
                RandomizedHadamard(self.in_features, self.rotation["in_seed"]),
            )
        return self._transforms

    def rotated_weight(self) -> torch.Tensor:
        """``Q'``: the decoded weight in rotated coordinates, float32 ``[out, in]``."""
        q = self.codec.decode(self.codes(), self.per_vector_scales())
        return q.float().reshape(self.out_features, self.in_features)

    @torch.no_grad()
    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``U^T Q' V``: the quantized weight in the layer's own coordinates, ``[out, in]``."""
        return self._unrotate(self.rotated_weight(), dtype)

    def _unrotate(self, q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        u, v = self.transforms()
        if u is not None:
            q = unrotate_weight(q.double(), u, v).float()
        return q.to(dtype)

    @torch.no_grad()
    def seed_cache(self, rotated: torch.Tensor, dtype: torch.dtype) -> None:
        """Set the forward cache from ``Q'`` already at hand (it must equal :meth:`rotated_weight`,
        e.g. the solver's reconstruction), skipping one decode of all codes."""
        if tuple(rotated.shape) != (self.out_features, self.in_features):
            raise QuantizeError(f"seed_cache needs [{self.out_features}, {self.in_features}], got {tuple(rotated.shape)}")
        self.weight_cache = self._unrotate(rotated.float(), dtype)

    def clear_cache(self) -> None:
        self.weight_cache = None

    def _weight(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        w = self.weight_cache
        if w is None or w.dtype != dtype or w.device != device:
            w = self.dequantize(dtype).to(device)
            self.weight_cache = w
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype if x.is_floating_point() else torch.float32
        w = self._weight(dtype, x.device)
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.linear(x, w, bias)

    def extra_repr(self) -> str:
        rot = "rotated" if self.rotation is not None else "no rotation"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"codec={self.codec.describe()}, {rot}, {self.bits_per_weight():.3f} bits/weight"
        )
