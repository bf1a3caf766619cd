"""VPTQ's codec: a large K-means codebook of long vectors plus a residual codebook stage.

VPTQ (Liu et al., 2024) codes vectors of D = 6 to 8 weights with one large codebook
(2^12 to 2^16 centroids) trained by Hessian-weighted K-means, then the residual with a
second, smaller codebook; codes are assigned column block by column block with
second-order error feedback (the solver's block LDLQ: "channel-independent second-order
optimization"). Here the main codebook (``index_bits``) and the residual codebook
(``residual_bits``, 0: none) are fitted by :func:`pvq.codecs.kmeans.weighted_kmeans`
with the solver's importances, stored in fp16 and counted; codes are the nearest main
centroid, then the nearest residual centroid, then one coordinate-descent pass
(:func:`pvq.codecs.aqlm.beam_search`, beam 1); a per-group RMS scale (fp16).

Deviations: VPTQ's outlier columns (a separate codebook for the columns of largest
Hessian diagonal) are not built: the codec contract codes vectors without knowing their
column. The paper's codebooks (2^16 x 8 fp16, 8.4 Mbit) are larger than every layer of
the reference model (0.15 to 0.4 M weights); the closest settings that pay are used there.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .aqlm import beam_search
from .base import CodecError, CodecOption, Codes, VectorCodec, check_vectors, fp16_exact, register_codec
from .kmeans import WEIGHTINGS, weighted_kmeans
from .packing import pack_bits, unpack_bits

MAX_INDEX_BITS = 16


class VPTQCodec(VectorCodec):
    """Main codebook of ``2^index_bits`` vectors of D plus a residual codebook of
    ``2^residual_bits`` (none at 0); per-group RMS scale."""

    name: ClassVar[str] = "vptq"

    def __init__(
        self,
        index_bits: int,
        residual_bits: int = 0,
        dim: int = 8,
        group_weights: int = 96,
        *,
        codebook: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
        iters: int = 10,
        seed: int = 0,
        weighting: str = "hessian",
    ) -> None:
        for name, v, lo in (("index_bits", index_bits, 1), ("residual_bits", residual_bits, 0), ("dim", dim, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= (MAX_INDEX_BITS if name != "dim" else 64):
                raise CodecError(f"{name} must be an integer in [{lo}, {MAX_INDEX_BITS}], got {v!r}")
        if not isinstance(group_weights, int) or group_weights < dim or group_weights % dim:
            raise CodecError(f"group_weights={group_weights!r} must be a positive multiple of dim={dim}")
        if weighting not in WEIGHTINGS:
            raise CodecError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.index_bits, self.residual_bits, self.dim = index_bits, residual_bits, dim
        self.group_weights, self.group_size = group_weights, group_weights // dim
        self.iters, self.seed, self.weighting = iters, seed, weighting
        self.fit_importance = None if weighting == "none" else weighting
        self.codebook = self._checked(codebook, index_bits, "codebook")
        self.residual = self._checked(residual, residual_bits, "residual") if residual_bits else None

    def _checked(self, book, bits, what):
        if book is None:
            return None
        if tuple(book.shape) != (1 << bits, self.dim):
            raise CodecError(f"{what} must have shape {(1 << bits, self.dim)}, got {tuple(book.shape)}")
        return fp16_exact(book.float())

    def config(self) -> dict:
        return {"index_bits": self.index_bits, "residual_bits": self.residual_bits, "dim": self.dim,
                "group_weights": self.group_weights, "iters": self.iters, "seed": self.seed,
                "weighting": self.weighting}

    def group_scales(self, x: torch.Tensor) -> torch.Tensor:
        """RMS of each group ``x: [m, G, D]`` -> ``[m]`` (fp16-exact)."""
        return fp16_exact(x.float().reshape(x.shape[0], -1).pow(2).mean(dim=1).sqrt())

    # -- fitted data
    @property
    def needs_fit(self) -> bool:
        return self.codebook is None

    def fit(self, x: torch.Tensor, scale: torch.Tensor, importance: torch.Tensor | None = None) -> VPTQCodec:
        """Hessian-weighted K-means of ``x / scale``, then of the residuals (importances ``[n, D]``)."""
        check_vectors(x, self.dim)
        s = scale.float().to(x.device).reshape(-1, 1)
        s = torch.where(s > 0, s, torch.ones_like(s))
        u = x.float() / s
        w = None if importance is None else importance.float().to(x.device) * s * s
        main, a, _ = weighted_kmeans(u, 1 << self.index_bits, w, self.iters, self.seed)
        res = None
        if self.residual_bits:
            res, _, _ = weighted_kmeans(u - main[a], 1 << self.residual_bits, w, self.iters, self.seed + 1)
        return VPTQCodec(**self.config(), codebook=main, residual=res)

    def _books(self, device) -> list[torch.Tensor]:
        if self.codebook is None:
            raise CodecError("this VPTQ codec has no codebook yet; call fit() first")
        return [self.codebook.to(device)] + ([self.residual.to(device)] if self.residual_bits else [])

    def data_tensors(self) -> dict[str, torch.Tensor]:
        books = self._books("cpu")
        out = {"codebook": books[0].half()}
        if self.residual_bits:
            out["residual_codebook"] = books[1].half()
        return out

    def with_data(self, stored: dict[str, torch.Tensor]) -> VPTQCodec:
        if "codebook" not in stored or (self.residual_bits and "residual_codebook" not in stored):
            raise CodecError("the stored tensors lack the VPTQ 'codebook' (or its 'residual_codebook')")
        res = stored["residual_codebook"].float() if self.residual_bits else None
        return VPTQCodec(**self.config(), codebook=stored["codebook"].float(), residual=res)

    # -- codes
    def encode(self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None) -> Codes:
        check_vectors(x, self.dim)
        s = scale.float().to(x.device).reshape(-1, 1)
        u = x.float() / torch.where(s > 0, s, torch.ones_like(s))
        idx = beam_search(u, self._books(x.device), None, beam=1)
        codes = {"index": idx[:, 0].contiguous()}
        if self.residual_bits:
            codes["residual"] = idx[:, 1].contiguous()
        return codes

    def decode(self, codes: Codes, scale: torch.Tensor) -> torch.Tensor:
        index = codes["index"]
        books = self._books(index.device)
        q = books[0][index]
        if self.residual_bits:
            q = q + books[1][codes["residual"]]
        return q * scale.float().to(index.device).reshape(-1, 1)

    def pack(self, codes: Codes) -> dict[str, torch.Tensor]:
        out = {"index": pack_bits(codes["index"], self.index_bits)}
        if self.residual_bits:
            out["residual"] = pack_bits(codes["residual"], self.residual_bits)
        return out

    def unpack(self, stored: dict[str, torch.Tensor], n: int) -> Codes:
        codes = {"index": unpack_bits(stored["index"], self.index_bits, n)}
        if self.residual_bits:
            codes["residual"] = unpack_bits(stored["residual"], self.residual_bits, n)
        return codes

    def nominal_bits_per_weight(self) -> float:
        """Code and scale bits per weight; the codebooks are shared and not included."""
        return (self.index_bits + self.residual_bits) / self.dim + 16.0 / self.group_weights

    def describe(self) -> str:
        res = f" + residual 2^{self.residual_bits}" if self.residual_bits else ""
        return f"vptq(2^{self.index_bits}{res}, D={self.dim}, group={self.group_weights} weights)"


@register_codec(
    "vptq", "VPTQ: large Hessian-weighted K-means codebook of long vectors + residual codebook (fp16, stored)", 6,
    options=(
        CodecOption("residual_bits", int, None,
                    "bits of the residual codebook's index (default: a quarter of the vector's bits)"),
    ),
)
def vptq_from_rate(bits: float, dim: int, residual_bits: int | None = None, **options) -> VPTQCodec:
    """``vptq`` with ``round(bits * D)`` index bits per vector split into the main and residual stages."""
    total = int(round(bits * dim))
    if residual_bits is None:
        residual_bits = total // 4
    main = total - residual_bits
    if not 1 <= main <= MAX_INDEX_BITS:
        raise CodecError(
            f"vptq at {bits} bits per weight, D={dim} gives a main codebook of 2^{main} centroids "
            f"(residual 2^{residual_bits}); the main index must take 1 to {MAX_INDEX_BITS} bits: "
            f"choose D <= {int((MAX_INDEX_BITS + residual_bits) / bits)} or a larger residual_bits"
        )
    return VPTQCodec(main, residual_bits, dim, **options)
