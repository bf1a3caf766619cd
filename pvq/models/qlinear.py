"""The quantized linear layer: packed codes, fp16 scales and rotation descriptors.

A :class:`QuantizedLinear` replaces an ``nn.Linear`` of weight ``W: [out, in]`` (or a
transformers ``Conv1D``, whose weight is stored ``[in, out]``; the same ``y = x W^T + b``).
It stores exactly what the codec wrote for the rotated weight ``W' = U W V^T``
(``U``, ``V``: randomized Hadamard transforms of sizes ``out`` and ``in``, or
identities when the method does not rotate):

* ``packed_<key>``: the uint8 tensors of ``codec.store`` (and any fitted data,
  e.g. a K-means codebook),
* ``scales``: one fp16 scale per group of G vectors, row-major
  ``[out * in / (D * G)]`` (absent when the codec stores no scale),
* ``bias`` (a parameter, float) when the linear had one.

The rotations are stored as descriptors (size and seed of each side), not as
dense factors: :class:`~pvq.transforms.LayerRotation` rebuilds them
deterministically. This keeps checkpoints small; the price is that a size
whose dense factor is a seeded random orthogonal matrix (no known Hadamard
order) depends on the platform's QR to the last bit.

``layout`` names how the stored codes are laid out (``"stored"``: the codec's
own ``store`` output); a runtime backend may ask for another and repack in
its ``prepare`` step. ``forward`` runs through the layer's backend
(:mod:`pvq.models.backends`): the highest-priority one that supports the
layer on the input's device, unless :meth:`set_backend` names one. Its
runtime tensors (a dense cache, repacked codes) are built on first use and
dropped by :meth:`clear_cache`.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from pvq.codecs import SCALE_KEY, VectorCodec, codec_from_config, codec_to_config
from pvq.errors import PvqError, QuantizeError
from pvq.transforms import LayerRotation

from .activations import ActivationQuant, ActQuantLinear
from .backends import BACKENDS, select_backend
from .compile_ops import (HANDLE_ATTR, compile_handle, is_registered, quantized_gated_linear, quantized_linear,
                          register_for_compile)
from .rotation_plan import FOLD_RULES, model_rotation
from .structure import linear_sizes

__all__ = [
    "LAYOUT_STORED",
    "MODULE_KINDS",
    "QuantizedEmbedding",
    "QuantizedLinear",
    "bits_per_activation",
    "buffer_name",
    "dtype_from_name",
    "dtype_name",
    "keep_stored_on_host",
    "prepare_for_compile",
    "runtime_tensor_list",
    "set_activation_quant",
    "set_backend",
]

PACKED_PREFIX = "packed_"
LAYOUT_STORED = "stored"
"""The codes as the codec's ``store`` wrote them (the only storage layout so far)."""

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
    rotation: ``{"out_seed": int | None, "in_seed": int | None}`` or None (no rotation; a seed None: that side absent).
    layout: how the stored codes are laid out (:data:`LAYOUT_STORED`).
    act_quant: how the layer quantizes its input (:class:`~pvq.models.activations.ActivationQuant`,
        or its dict), None: not at all.
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
        layout: str = LAYOUT_STORED,
        act_quant: ActivationQuant | dict | None = None,
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
        if layout != LAYOUT_STORED:
            raise QuantizeError(f"unknown code layout {layout!r}; this pvq reads {LAYOUT_STORED!r}")
        self.layout = layout
        try:
            self.rotation = LayerRotation.from_seeds(self.out_features, self.in_features, rotation)
        except PvqError as e:
            raise QuantizeError(f"bad rotation of a quantized layer: {e}") from e
        self.stored_keys = list(tensors)
        if self.codec.stores_scale and SCALE_KEY not in tensors:
            raise QuantizeError(f"codec {self.codec.name!r} stores scales but the layer has no {SCALE_KEY!r} tensor")
        for key, (shape, dtype) in tensors.items():
            self.register_buffer(buffer_name(key), torch.empty(tuple(shape), dtype=dtype, device=device))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, dtype=bias_dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.backend_name: str | None = None  # None: chosen per device by priority
        self._runtime: tuple[str, dict[str, torch.Tensor]] | None = None
        # True: once a runtime is prepared on an accelerator, the stored tensors it does not read move to
        # host memory (see :func:`keep_stored_on_host`)
        self.stored_on_host = False
        self.act_quant: ActivationQuant | None = None
        self.act_quantizer = None
        if act_quant is not None:
            self.set_activation_quant(ActivationQuant.from_dict(act_quant) if isinstance(act_quant, dict) else act_quant)

    # ------------------------------------------------------------ construction

    @classmethod
    def from_stored(
        cls,
        linear: nn.Module,
        codec: VectorCodec,
        stored: dict[str, torch.Tensor],
        rotation: LayerRotation | None = None,
    ) -> QuantizedLinear:
        """The quantized replacement of ``linear`` (``nn.Linear`` or ``Conv1D``) from the codec's
        stored tensors (packed codes, fitted data and ``"scale"``, e.g. ``LinearResult.stored``)."""
        inp, out = linear_sizes(linear)
        return cls.from_weight_stored(inp, out, linear.bias, linear.weight, codec, stored, rotation)

    @classmethod
    def from_weight_stored(
        cls,
        in_features: int,
        out_features: int,
        bias: torch.Tensor | None,
        like: torch.Tensor,
        codec: VectorCodec,
        stored: dict[str, torch.Tensor],
        rotation: LayerRotation | None = None,
    ) -> QuantizedLinear:
        """A quantized weight ``[out, in]`` (an optional ``bias [out]``) on ``like``'s device, its bias in
        ``like``'s dtype, from the codec's stored tensors."""
        tensors = {k: (tuple(v.shape), v.dtype) for k, v in stored.items()}
        has_bias = bias is not None
        q = cls(
            in_features, out_features, codec_to_config(codec), tensors, bias=has_bias,
            rotation=None if rotation is None else rotation.seeds(),
            bias_dtype=like.dtype if has_bias else torch.float32, device=like.device,
        )
        with torch.no_grad():
            for k, v in stored.items():
                getattr(q, buffer_name(k)).copy_(v)
            if has_bias:
                q.bias.copy_(bias.detach())
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
                layout=cfg.get("layout", LAYOUT_STORED), act_quant=cfg.get("activation"),
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
            "rotation": None if self.rotation is None else self.rotation.seeds(),
            "layout": self.layout,
            "tensors": {
                k: {"shape": list(t.shape), "dtype": dtype_name(t.dtype)} for k, t in self.stored_tensors().items()
            },
            "bits_per_weight": self.bits_per_weight(),
            **({} if self.act_quant is None else {
                "activation": {**self.act_quant.to_dict(), "bits_per_activation": self.bits_per_activation()}}),
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

    def fitted_codec(self) -> VectorCodec:
        """The layer's codec with its stored fitted data (a K-means codebook) put back."""
        return self.codec.with_data(self.stored_tensors())

    def codes(self):
        """Unpacked codes (the codec's :data:`~pvq.codecs.Codes`), ``out * in / D`` vectors row-major."""
        return self.codec.unpack(self.stored_tensors(), self.num_vectors)

    def per_vector_scales(self) -> torch.Tensor:
        if SCALE_KEY in self.stored_keys:
            return self.scales.float().repeat_interleave(self.codec.group_size)
        return torch.ones(self.num_vectors, device=self._buffer_device())

    def _buffer_device(self) -> torch.device:
        for t in self.stored_tensors().values():
            return t.device
        return torch.device("cpu")

    # ------------------------------------------------------------ weights

    def rotated_weight(self) -> torch.Tensor:
        """``Q'``: the decoded weight in rotated coordinates, float32 ``[out, in]``."""
        q = self.fitted_codec().decode(self.codes(), self.per_vector_scales())
        return q.float().reshape(self.out_features, self.in_features)

    @torch.no_grad()
    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``U^T Q' V``: the quantized weight in the layer's own coordinates, ``[out, in]``."""
        return self.unrotate_weight(self.rotated_weight(), dtype)

    def unrotate_weight(self, q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``U^T Q' V`` of a rotated-coordinates weight ``q [out, in]``, in ``dtype`` (differentiable)."""
        if self.rotation is not None:
            q = self.rotation.unrotate_weight(q.double()).float()
        return q.to(dtype)

    def rotate_input(self, x: torch.Tensor) -> torch.Tensor:
        """``V x`` for ``x: [..., in]`` (identity without rotation)."""
        return x if self.rotation is None else self.rotation.rotate_input(x)

    def unrotate_output(self, y: torch.Tensor) -> torch.Tensor:
        """``U^T y'`` for ``y': [..., out]`` (identity without rotation)."""
        return y if self.rotation is None else self.rotation.unrotate_output(y)

    # ------------------------------------------------------------ activations

    def set_activation_quant(self, act: ActivationQuant | None) -> None:
        """Quantize this layer's input with ``act`` from now on (None: stop). D defaults to the
        weight codec's D (so integer products can pair weight and activation vectors)."""
        quantizer = None
        if act is not None:
            if not isinstance(act, ActivationQuant):
                raise QuantizeError(f"act must be an ActivationQuant or None, got {type(act).__name__}")
            if act.rotate and (self.rotation is None or self.rotation.in_seed is None):
                raise QuantizeError(
                    "activation rotation uses the weights' randomized Hadamard, and this layer's weights are not "
                    "rotated: quantize with --rotate (rotate=True) or pass --no-act-rotate (act rotate=False)"
                )
            with torch.device("cpu"):  # quantizer tables are host tensors even while transformers builds on "meta"
                act = act.resolve(self.in_features, self.codec.dim if self.codec.dim > 1 else None)
                quantizer = act.quantizer(self.in_features)
        self.act_quant = act
        self.act_quantizer = quantizer
        self._runtime = None
        named = BACKENDS.get(self.backend_name) if self.backend_name else None
        if named is not None and named.quantizes_activations != (act is not None):
            self.backend_name = None  # a named backend of the other kind cannot run the layer now

    def bits_per_activation(self) -> float | None:
        """Bits per input activation, everything counted (None: the input is not quantized)."""
        return None if self.act_quantizer is None else self.act_quantizer.bits_per_activation()

    # ------------------------------------------------------------ runtime

    def set_backend(self, name: str | None) -> None:
        """Run this layer through backend ``name`` (None: the best one for each device)."""
        if name is not None and name not in BACKENDS:
            raise QuantizeError(f"unknown backend {name!r}; registered: {', '.join(sorted(BACKENDS))}")
        self.backend_name = name
        self._runtime = None

    @property
    def backend(self) -> str | None:
        """Name of the backend whose runtime tensors are prepared (None before the first forward)."""
        return None if self._runtime is None else self._runtime[0]

    @torch.no_grad()
    def seed_cache(self, rotated: torch.Tensor, dtype: torch.dtype) -> None:
        """Prepare the ``dense`` backend from ``Q'`` already at hand (it must equal
        :meth:`rotated_weight`, e.g. the solver's reconstruction), skipping one decode."""
        if tuple(rotated.shape) != (self.out_features, self.in_features):
            raise QuantizeError(f"seed_cache needs [{self.out_features}, {self.in_features}], got {tuple(rotated.shape)}")
        self._seed(rotated, dtype)

    def _seed(self, rotated: torch.Tensor, dtype: torch.dtype) -> None:
        """What :meth:`seed_cache` keeps of a checked ``Q'``: the dense backend's weight, where it runs."""
        if select_backend(self, rotated.device, self.backend_name).name == "dense":
            self._runtime = ("dense", {"weight": self.unrotate_weight(rotated.float(), dtype)})

    def clear_cache(self) -> None:
        """Drop the runtime tensors (rebuilt on the next forward)."""
        self._runtime = None

    def runtime_tensors(self) -> dict[str, torch.Tensor]:
        """The prepared backend's runtime tensors (empty before the first forward)."""
        return {} if self._runtime is None else dict(self._runtime[1])

    def _prepared(self, x: torch.Tensor) -> tuple:
        dtype = x.dtype if x.is_floating_point() else torch.float32
        if self._runtime is not None:
            name, runtime = self._runtime
            backend = BACKENDS[name]
            if backend.is_current(runtime, x.device, dtype) and backend.still_runs(self, runtime, x.device):
                return backend, runtime
        backend = select_backend(self, x.device, self.backend_name)
        self._runtime = None  # free the old runtime before building the new one
        if len({t.device for t in self.stored_tensors().values()}) > 1:  # some moved to the host earlier
            for key, t in self.stored_tensors().items():
                self._buffers[buffer_name(key)] = t.to(x.device)
        runtime = backend.prepare(self, x.device, dtype)
        self._runtime = (backend.name, runtime)
        if self.stored_on_host and x.device.type != "cpu":
            self.move_stored_to_host()
        return backend, runtime

    def stored_keys_unread_by_runtime(self) -> list[str]:
        """Stored keys whose tensors share no storage with the prepared runtime's tensors (all of
        them before the first forward): the ones a runtime layout transcoded at load leaves unused."""
        read = {t.untyped_storage().data_ptr() for t in runtime_tensor_list(self._runtime[1] if self._runtime else {})}
        return [k for k, t in self.stored_tensors().items() if t.untyped_storage().data_ptr() not in read]

    @torch.no_grad()
    def move_stored_to_host(self) -> int:
        """Move the stored tensors that the prepared runtime does not read to host memory; returns
        the accelerator bytes freed. Decoding runs from the runtime; a later rebuild (another device
        or dtype) reads the host copies. ``model.to(device)`` brings them back."""
        if self._runtime is None:
            return 0
        freed = 0
        for key in self.stored_keys_unread_by_runtime():
            t = self.stored_tensors()[key]
            if t.device.type != "cpu":
                freed += t.untyped_storage().nbytes()
                self._buffers[buffer_name(key)] = t.cpu()
        return freed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            x = x.float()
        if torch.compiler.is_compiling() and (handle := compile_handle(self)):  # one operator in a compiled graph
            return quantized_linear(x, handle)
        backend, runtime = self._prepared(x)
        return backend.linear(self, runtime, x)

    def gated_forward(self, gate: torch.Tensor, up: torch.Tensor, activation: str = "silu") -> torch.Tensor:
        """``forward(act(gate) * up)`` (a gated MLP's down projection), through the backend's
        :meth:`~pvq.models.backends.Backend.gated_linear` (one kernel with the input rotation where it has one)."""
        if torch.compiler.is_compiling() and (handle := compile_handle(self)):
            return quantized_gated_linear(gate, up, handle, activation)
        backend, runtime = self._prepared(gate)
        return backend.gated_linear(self, runtime, gate, up, activation)

    def extra_repr(self) -> str:
        rot = "rotated" if self.rotation is not None else "no rotation"
        return (
            f"backend={self.backend or self.backend_name or 'auto'}, "
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"codec={self.codec.describe()}, {rot}, {self.bits_per_weight():.3f} bits/weight"
            + ("" if self.act_quantizer is None else f", act={self.act_quantizer.describe()}")
        )


class QuantizedEmbedding(QuantizedLinear):
    """An input embedding ``[num_embeddings, embedding_dim]`` stored as codec codes: the table is a
    :class:`QuantizedLinear` weight ``[out = num_embeddings, in = embedding_dim]`` (vectors of D along the
    embedding, rotated on their input side like a layer's) whose rows are looked up instead of multiplied.

    ``forward(ids)`` returns ``table[ids]`` in :attr:`table_dtype`, by :attr:`lookup`:

    * ``table`` (default): the whole table decoded once per device and dtype and kept (``nn.Embedding``'s
      memory; no decode per call; a CUDA-graph step captures it like ``nn.Embedding``);
    * ``rows``: the rows of the distinct ids in a call are decoded and un-rotated, from the layer's codes
      unpacked once and kept in the smallest integer dtypes that hold them (3-bit PVQ at D = 32: 6.75
      bits per weight, its split index in int64 parts, against the table's 16), so a loaded model stays
      smaller; each call synchronizes with the device (the distinct ids), so it is for eager use.

    The two agree to float rounding (the un-rotation's transforms run on other batch shapes).
    ``table_dtype`` is the replaced embedding's dtype (set at quantization, by the loaders from the model
    they build, and by :func:`~pvq.models.checkpoint.cast_unquantized`).
    """

    kind = "embedding"
    LOOKUPS = ("rows", "table")

    def __init__(self, *args, table_dtype: torch.dtype = torch.float32, lookup: str = "table", **kwargs):
        super().__init__(*args, **kwargs)
        if self.bias is not None:
            raise QuantizeError("a quantized embedding has no bias")
        self.table_dtype = table_dtype
        self._table: tuple[torch.device, torch.dtype, torch.Tensor] | None = None
        self._row_codes: tuple[torch.device, dict[str, torch.Tensor], torch.Tensor] | None = None
        self.lookup = "table"
        self.set_lookup(lookup)

    def set_lookup(self, lookup: str) -> None:
        """Decode the rows a call needs (``rows``) or keep the whole decoded table (``table``)."""
        if lookup not in self.LOOKUPS:
            raise QuantizeError(f"lookup must be one of {', '.join(self.LOOKUPS)}, got {lookup!r}")
        self.lookup = lookup
        self.clear_cache()

    @property
    def num_embeddings(self) -> int:
        return self.out_features

    @property
    def embedding_dim(self) -> int:
        return self.in_features

    @classmethod
    def from_layer_config(cls, cfg: dict, bias_dtype: torch.dtype = torch.float32,
                          device: torch.device | str | None = None) -> QuantizedEmbedding:
        """Empty module from :meth:`layer_config`; ``bias_dtype``: the replaced embedding's dtype."""
        q = super().from_layer_config(cfg, bias_dtype, device)
        q.table_dtype = bias_dtype
        return q

    def layer_config(self) -> dict:
        return {**super().layer_config(), "kind": self.kind}

    def _seed(self, rotated: torch.Tensor, dtype: torch.dtype) -> None:
        """``table`` lookups keep the table decoded from ``Q'``; ``rows`` lookups decode from the codes."""
        if self.lookup == "table":
            self._table = (rotated.device, dtype, self.unrotate_weight(rotated.float(), dtype))

    def clear_cache(self) -> None:
        super().clear_cache()
        self._table = None
        self._row_codes = None

    def cached_bytes(self) -> int:
        """Bytes this module keeps beside its stored tensors for lookups (the table, or the unpacked codes)."""
        if self._table is not None:
            return self._table[2].numel() * self._table[2].element_size()
        if self._row_codes is not None:
            return sum(t.numel() * t.element_size() for t in (*self._row_codes[1].values(), self._row_codes[2]))
        return 0

    def _codes_on(self, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(the codes unpacked once, each integer tensor in the smallest dtype that holds it; the per-group
        scales, float32) on ``device``."""
        if self._row_codes is None or self._row_codes[0] != device:
            self._row_codes = None
            codes = {k: _narrowest(v).to(device) for k, v in self.codes().items()}
            groups = (self.scales.float() if SCALE_KEY in self.stored_keys
                      else torch.ones(self.num_vectors // self.codec.group_size)).to(device)
            self._row_codes = (device, codes, groups)
        return self._row_codes[1], self._row_codes[2]

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The table's rows ``ids`` (int ``[k]``), ``[k, embedding_dim]`` in :attr:`table_dtype`, decoded from
        the codes."""
        codes, groups = self._codes_on(ids.device)
        per_row = self.in_features // self.codec.dim
        vec = (ids[:, None] * per_row + torch.arange(per_row, device=ids.device)).reshape(-1)
        picked = {k: v.index_select(0, vec).long() if not v.is_floating_point() else v.index_select(0, vec)
                  for k, v in codes.items()}
        q = self.fitted_codec().decode(picked, groups.index_select(0, vec // self.codec.group_size))
        return self.unrotate_weight(q.float().reshape(len(ids), self.in_features), self.table_dtype)

    def table(self, device: torch.device | None = None) -> torch.Tensor:
        """The decoded table ``[num_embeddings, embedding_dim]`` in :attr:`table_dtype` on ``device`` (default:
        the stored tensors' device), decoded on first use and kept."""
        device = torch.device(device) if device is not None else self._buffer_device()
        if self._table is None or self._table[0] != device or self._table[1] != self.table_dtype:
            self._table = None  # free the old copy before decoding the new one
            self._table = (device, self.table_dtype, self.dequantize(self.table_dtype).to(device))
        return self._table[2]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.is_floating_point():
            raise QuantizeError(f"a quantized embedding looks up integer token ids, got {ids.dtype}")
        if self.lookup == "table":
            return nn.functional.embedding(ids, self.table(ids.device))
        distinct, where = torch.unique(ids.reshape(-1), return_inverse=True)
        if distinct.numel() and (int(distinct[0]) < 0 or int(distinct[-1]) >= self.num_embeddings):
            raise QuantizeError(f"token ids must be in [0, {self.num_embeddings}), got {int(distinct[0])}.."
                                f"{int(distinct[-1])}")
        return self.rows(distinct)[where].reshape(*ids.shape, self.in_features)

    def extra_repr(self) -> str:
        rot = "rotated" if self.rotation is not None else "no rotation"
        return (f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, "
                f"codec={self.codec.describe()}, {rot}, {self.bits_per_weight():.3f} bits/weight, "
                f"{self.lookup} lookups in {dtype_name(self.table_dtype)}")


def _narrowest(t: torch.Tensor) -> torch.Tensor:
    """An integer tensor in the smallest signed dtype that holds its values (others unchanged)."""
    if t.is_floating_point() or t.dtype == torch.bool or t.numel() == 0:
        return t
    lo, hi = int(t.min()), int(t.max())
    for dt in (torch.int8, torch.int16, torch.int32):
        if torch.iinfo(dt).min <= lo and hi <= torch.iinfo(dt).max:
            return t.to(dt)
    return t


MODULE_KINDS: dict[str, type[QuantizedLinear]] = {"linear": QuantizedLinear, "embedding": QuantizedEmbedding}
"""Quantized module classes by the ``kind`` of their checkpoint entry (absent: ``linear``)."""


def set_backend(model: nn.Module, name: str | None) -> int:
    """Make every :class:`QuantizedLinear` of ``model`` use backend ``name`` (None: automatic).

    Returns the number of layers set; their runtime tensors are rebuilt on the next forward.
    """
    if name is not None and name not in BACKENDS:
        raise QuantizeError(f"unknown backend {name!r}; registered: {', '.join(sorted(BACKENDS))}")
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    for m in layers:
        m.set_backend(name)
    return len(layers)


def runtime_tensor_list(value) -> list[torch.Tensor]:
    """Every tensor inside a runtime value: a tensor, a list/tuple/dict of them, or a kernel runtime
    object holding them as attributes."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in runtime_tensor_list(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in runtime_tensor_list(v)]
    if hasattr(value, "__dict__"):
        return [t for v in vars(value).values() for t in runtime_tensor_list(v)]
    return []


def keep_stored_on_host(model: nn.Module, on: bool = True) -> int:
    """Make every :class:`QuantizedLinear` of ``model`` move the stored tensors its runtime does not
    read to host memory once the runtime is prepared on an accelerator (on the next forward, or now
    for runtimes already prepared). A runtime layout transcoded at load (the CUDA rows and leaf
    layouts) otherwise sits on the GPU beside the stored codes. Returns the accelerator bytes freed now."""
    freed = 0
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            m.stored_on_host = bool(on)
            if on and m._runtime is not None and m._buffer_device().type != "cpu":
                freed += m.move_stored_to_host()
    return freed


def set_activation_quant(model: nn.Module, act: ActivationQuant | None, *, seed: int = 0,
                         plain: bool = False) -> int:
    """Make the linears of ``model``'s decoder blocks quantize their inputs with ``act`` (None: stop).

    Every :class:`QuantizedLinear` takes the setting (D defaults to its weight codec's D).
    ``plain=True`` also swaps every plain ``nn.Linear`` of the blocks for an
    :class:`~pvq.models.activations.ActQuantLinear` (full-precision weight, quantized input,
    its own randomized Hadamard seeded from ``seed`` and the layer name): activation-only
    quantization ("W16" rows). Returns the number of layers set. Settings are checked on every
    layer before any is changed.
    """
    from .methods import decoder_layers
    from .plan import rotation_seed as _seed

    layers = decoder_layers(model)
    fused = model_rotation(model)
    rule = FOLD_RULES[model.config.model_type] if fused is not None else None
    quantized, plain_linears = [], []
    for i, block in enumerate(layers):
        for name, mod in block.named_modules():
            if isinstance(mod, QuantizedLinear):
                quantized.append((name, mod))
            elif isinstance(mod, nn.Linear) and plain:
                plain_linears.append((block, name, f"model.layers.{i}.{name}", mod))
    def layer_act(mod, name):
        """Under the fused plan only the layers that keep an online input rotation (down_proj; o_proj
        when quantized for activations) rotate their activations: the others read the rotated stream."""
        if fused is None or act is None or not act.rotate:
            return act
        keeps = mod.rotation is not None and mod.rotation.in_seed is not None if isinstance(mod, QuantizedLinear) \
            else any(name.endswith(n) for n in (rule.online_input, *rule.act_online_inputs))
        return act if keeps else dataclasses.replace(act, rotate=False)

    if act is not None:
        for name, mod in quantized:
            a = layer_act(mod, name)
            if a.rotate and (mod.rotation is None or mod.rotation.in_seed is None):
                mod.set_activation_quant(a)  # raises the explanatory error
            a.resolve(mod.in_features, mod.codec.dim if mod.codec.dim > 1 else None)
    for name, mod in quantized:
        mod.set_activation_quant(layer_act(mod, name))
    if act is not None:
        for block, name, full, mod in plain_linears:
            parent, _, child = name.rpartition(".")
            setattr(block.get_submodule(parent) if parent else block, child,
                    ActQuantLinear(mod, layer_act(mod, name), seed=_seed(seed, full, "act")))
    return len(quantized) + (len(plain_linears) if act is not None else 0)


def bits_per_activation(model: nn.Module, unquantized_bits: float = 16.0) -> float:
    """Bits per input activation of the decoder blocks' linears: each layer's ``in_features``
    inputs per token at its quantizer's bits (everything counted), or at ``unquantized_bits``
    when it does not quantize them; weighted by ``in_features``."""
    from .methods import decoder_layers

    try:
        modules = [m for layer in decoder_layers(model) for m in layer.modules()]
    except QuantizeError:
        modules = list(model.modules())
    bits = count = 0.0
    for m in modules:
        if isinstance(m, (QuantizedLinear, ActQuantLinear)):
            b = m.bits_per_activation()
            bits, count = bits + m.in_features * (unquantized_bits if b is None else b), count + m.in_features
        elif isinstance(m, nn.Linear):
            bits, count = bits + m.in_features * unquantized_bits, count + m.in_features
    return bits / count if count else float("nan")


def prepare_for_compile(model: nn.Module, programmatic_launch: bool = False) -> int:
    """Make every :class:`QuantizedLinear` of ``model`` (not the embeddings, which look rows up) one operator
    inside ``torch.compile``'s graphs (:mod:`~pvq.models.compile_ops`); returns how many. Call it before
    compiling the model (again after copying it); a layer keeps the handle it has. ``programmatic_launch``: the
    operators launch their kernels as programmatic dependent launches (for a step compiled with inductor's
    ``triton.enable_pdl``; :func:`~pvq.models.backends.programmatic_launches`), set on every layer's handle."""
    layers = [m for m in model.modules() if type(m) is QuantizedLinear]
    for layer in layers:
        if not is_registered(layer):
            register_for_compile(layer)
        getattr(layer, HANDLE_ATTR).programmatic = bool(programmatic_launch)
    return len(layers)
