"""AQLM's codec: additive quantization, M codebooks of 2^B vectors of D, beam-searched codes.

AQLM (Egiazarian et al., 2024) codes each vector of D weights (default 8) as the sum of M
codewords, one from each of M learned codebooks of ``2^B`` entries (``2x8``: M = 2, B = 8,
2 bits per weight at D = 8; ``1x16``: M = 1, B = 16), times a scale. Here:

* codebooks initialized by residual K-means (:func:`pvq.codecs.kmeans.weighted_kmeans`,
  Hessian importances from the solver), stored in fp16 and counted;
* codes by beam search (``beam`` partial sums kept per codebook, then one pass of
  coordinate descent that re-picks each code with the others fixed), under the plain
  metric (:meth:`encode`) or a ``[D, D]`` quadratic form (:meth:`encode_hessian`, which the
  solver calls with the vector's block of the Hessian);
* codebook updates minimizing the layer output error with the codes fixed, alternated
  with code reassignment (:mod:`pvq.solvers.codebook_update`, ``update_rounds``);
* a per-group RMS scale (fp16; AQLM has one per output channel).

Codes ``{"index": [n, M]}`` pack at B bits each.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import CodecError, CodecOption, Codes, VectorCodec, check_vectors, fp16_exact, register_codec
from .kmeans import WEIGHTINGS, weighted_kmeans
from .packing import pack_bits, unpack_bits

MAX_CODEBOOK_BITS = 16


def beam_search(u: torch.Tensor, books, metric: torch.Tensor | None, beam: int,
                chunk: int = 2048) -> torch.Tensor:
    """Codes ``[n, M]`` of ``u: [n, D]`` in the additive codebooks ``books`` (``[M, K, D]``,
    or a list of M ``[K_m, D]`` of any sizes) minimizing
    ``(u - sum_m C_m[i_m]) A (u - ...)^T`` (``A = metric`` or the identity).

    Beam search over the codebooks in order (``beam`` best partial sums kept), then one
    coordinate-descent pass (each code re-picked with the others fixed; never worse)."""
    books = list(books)
    m_books, d = len(books), books[0].shape[1]
    a = torch.eye(d, dtype=u.dtype, device=u.device) if metric is None else metric.to(u)
    ca = [b @ a for b in books]  # [K_m, D]
    cac = [(c * b).sum(-1) for c, b in zip(ca, books)]  # [K_m]
    out = torch.empty(u.shape[0], m_books, dtype=torch.int64, device=u.device)
    for s in range(0, u.shape[0], chunk):
        uc = u[s : s + chunk]
        n = uc.shape[0]
        part = torch.zeros(n, 1, d, dtype=u.dtype, device=u.device)
        codes = torch.zeros(n, 1, 0, dtype=torch.int64, device=u.device)
        for m in range(m_books):
            k = books[m].shape[0]
            r = uc.unsqueeze(1) - part  # [n, b, D]
            rr = ((r @ a) * r).sum(-1)  # [n, b]
            cand = rr.unsqueeze(2) - 2.0 * (r @ ca[m].T) + cac[m]  # [n, b, K]
            width = min(beam, cand.shape[1] * k) if m < m_books - 1 else 1
            _, idx = cand.reshape(n, -1).topk(width, dim=1, largest=False)
            src, code = idx // k, idx % k
            part = torch.gather(part, 1, src.unsqueeze(2).expand(-1, -1, d)) + books[m][code]
            codes = torch.cat([torch.gather(codes, 1, src.unsqueeze(2).expand(-1, -1, codes.shape[2])),
                               code.unsqueeze(2)], dim=2)
        c = codes[:, 0, :]
        total = part[:, 0, :]
        for m in range(m_books):  # coordinate descent: re-pick code m with the others fixed
            r = uc - (total - books[m][c[:, m]])
            new = (-2.0 * (r @ ca[m].T) + cac[m]).argmin(dim=1)
            total = total - books[m][c[:, m]] + books[m][new]
            c[:, m] = new
        out[s : s + n] = c
    return out


class AQLMCodec(VectorCodec):
    """M additive codebooks of ``2^codebook_bits`` entries of D, per-group RMS scale."""

    name: ClassVar[str] = "aqlm"

    def __init__(
        self,
        num_codebooks: int,
        codebook_bits: int = 8,
        dim: int = 8,
        group_weights: int = 128,
        *,
        codebooks: torch.Tensor | None = None,
        beam: int = 4,
        iters: int = 15,
        seed: int = 0,
        weighting: str = "hessian",
        update_rounds: int = 2,
    ) -> None:
        for name, v, lo, hi in (("num_codebooks", num_codebooks, 1, 8), ("codebook_bits", codebook_bits, 1,
                                MAX_CODEBOOK_BITS), ("dim", dim, 1, 64), ("beam", beam, 1, 64)):
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise CodecError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
        if not isinstance(group_weights, int) or group_weights < dim or group_weights % dim:
            raise CodecError(f"group_weights={group_weights!r} must be a positive multiple of dim={dim}")
        if weighting not in WEIGHTINGS:
            raise CodecError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if not isinstance(update_rounds, int) or update_rounds < 0:
            raise CodecError(f"update_rounds must be an integer >= 0, got {update_rounds!r}")
        self.num_codebooks, self.codebook_bits, self.dim = num_codebooks, codebook_bits, dim
        self.num_entries = 1 << codebook_bits
        self.group_weights, self.group_size = group_weights, group_weights // dim
        self.beam, self.iters, self.seed, self.weighting = beam, iters, seed, weighting
        self.fit_importance = None if weighting == "none" else weighting
        self.update_rounds = update_rounds
        if codebooks is not None:
            want = (num_codebooks, self.num_entries, dim)
            if tuple(codebooks.shape) != want:
                raise CodecError(f"codebooks must have shape {want}, got {tuple(codebooks.shape)}")
            codebooks = fp16_exact(codebooks.float())
        self.codebooks = codebooks

    def config(self) -> dict:
        return {"num_codebooks": self.num_codebooks, "codebook_bits": self.codebook_bits, "dim": self.dim,
                "group_weights": self.group_weights, "beam": self.beam, "iters": self.iters, "seed": self.seed,
                "weighting": self.weighting, "update_rounds": self.update_rounds}

    def group_scales(self, x: torch.Tensor) -> torch.Tensor:
        """RMS of each group ``x: [m, G, D]`` -> ``[m]`` (fp16-exact)."""
        return fp16_exact(x.float().reshape(x.shape[0], -1).pow(2).mean(dim=1).sqrt())

    # -- fitted data
    @property
    def needs_fit(self) -> bool:
        return self.codebooks is None

    def _unit(self, x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = scale.float().to(x.device).reshape(-1, 1)
        s = torch.where(s > 0, s, torch.ones_like(s))
        return x.float() / s, s

    def fit(self, x: torch.Tensor, scale: torch.Tensor, importance: torch.Tensor | None = None) -> AQLMCodec:
        """Residual K-means codebooks of ``x / scale`` (importances ``[n, D]`` optional)."""
        check_vectors(x, self.dim)
        u, s = self._unit(x, scale)
        w = None if importance is None else importance.float().to(x.device) * s * s
        books, r = [], u
        for m in range(self.num_codebooks):
            c, a, _ = weighted_kmeans(r, self.num_entries, w, self.iters, self.seed + m)
            books.append(c)
            r = r - c[a]
        return AQLMCodec(**self.config(), codebooks=torch.stack(books))

    def data_tensors(self) -> dict[str, torch.Tensor]:
        return {"codebooks": self._books("cpu").half()}

    def with_data(self, stored: dict[str, torch.Tensor]) -> AQLMCodec:
        if "codebooks" not in stored:
            raise CodecError("the stored tensors lack the AQLM 'codebooks'")
        return AQLMCodec(**self.config(), codebooks=stored["codebooks"].float())

    def _books(self, device) -> torch.Tensor:
        if self.codebooks is None:
            raise CodecError("this AQLM codec has no codebooks yet; call fit() first")
        return self.codebooks.to(device)

    # -- codes
    def encode(self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None) -> Codes:
        check_vectors(x, self.dim)
        u, _ = self._unit(x, scale)
        return {"index": beam_search(u, self._books(x.device), None, self.beam)}

    def encode_hessian(self, x: torch.Tensor, scale: torch.Tensor, h: torch.Tensor) -> Codes:
        """Codes minimizing ``e h e^T`` of each vector's error (``h: [D, D]``; the scale is a
        per-vector factor of the error, so the search runs on ``x / scale`` with metric ``h``)."""
        check_vectors(x, self.dim)
        u, _ = self._unit(x, scale)
        return {"index": beam_search(u, self._books(x.device), h.float(), self.beam)}

    def decode(self, codes: Codes, scale: torch.Tensor) -> torch.Tensor:
        return self.decode_trainable({"codebooks": self._books(codes["index"].device)}, codes, scale)

    def pack(self, codes: Codes) -> dict[str, torch.Tensor]:
        return {"index": pack_bits(codes["index"].reshape(-1), self.codebook_bits)}

    def unpack(self, stored: dict[str, torch.Tensor], n: int) -> Codes:
        flat = unpack_bits(stored["index"], self.codebook_bits, n * self.num_codebooks)
        return {"index": flat.reshape(n, self.num_codebooks)}

    def nominal_bits_per_weight(self) -> float:
        """Code and scale bits per weight; the codebooks are shared and not included."""
        return self.num_codebooks * self.codebook_bits / self.dim + 16.0 / self.group_weights

    # -- codebook update (pvq.solvers.codebook_update)
    def trainable_data(self) -> dict[str, torch.Tensor]:
        return {"codebooks": self._books("cpu").float()}

    def decode_trainable(self, data: dict[str, torch.Tensor], codes: Codes, scale: torch.Tensor) -> torch.Tensor:
        index = codes["index"]
        books = data["codebooks"].to(index.device)
        q = sum(books[m][index[:, m]] for m in range(self.num_codebooks))
        return q * scale.float().to(index.device).reshape(-1, 1)

    def with_trainable(self, data: dict[str, torch.Tensor]) -> AQLMCodec:
        return AQLMCodec(**self.config(), codebooks=data["codebooks"].detach())

    def describe(self) -> str:
        return (f"aqlm({self.num_codebooks}x{self.codebook_bits}, D={self.dim}, "
                f"group={self.group_weights} weights)")


@register_codec(
    "aqlm", "M additive fp16 codebooks of 2^B vectors (beam-searched codes, codebooks updated on H)", 8,
    options=(
        CodecOption("codebook_bits", int, 8, "B, bits per code (2x8: B=8; 1x16: B=16); M follows from the rate"),
        CodecOption("num_codebooks", int, None, "M additive codebooks (default: bits * D / B)"),
        CodecOption("beam", int, 4, "beam width of the code search"),
        CodecOption("update_rounds", int, 2, "codebook updates after assignment (codes reassigned between them)"),
    ),
)
def aqlm_from_rate(bits: float, dim: int, codebook_bits: int = 8, num_codebooks: int | None = None,
                   **options) -> AQLMCodec:
    """``aqlm`` with M = ``round(bits * D / B)`` codebooks of ``2^B`` entries unless M is given."""
    if num_codebooks is None:
        num_codebooks = int(round(bits * dim / codebook_bits))
        if num_codebooks < 1:
            raise CodecError(
                f"aqlm at {bits} bits per weight with D={dim} and B={codebook_bits} code bits gives no codebook; "
                f"use D >= {max(1, int(codebook_bits / bits + 0.5))} or a smaller codebook_bits"
            )
    return AQLMCodec(num_codebooks, codebook_bits, dim, **options)
