"""GPTVQ's codec: a Hessian-weighted K-means codebook stored in 8 bits, updated after assignment.

GPTVQ (van Baalen et al., 2024) quantizes vectors of D = 1, 2 or 4 consecutive weights
of a row to a codebook, initialized by Hessian-weighted EM (here the weighted K-means of
:mod:`pvq.codecs.kmeans`, importances from the Hessian solver), assigns codes column block
by column block with GPTQ's error feedback (the solver's block LDLQ), then updates the
codebook to lower the output error with the codes fixed (the solver's
:func:`pvq.solvers.codebook_update.update_codebooks`, ``update_rounds`` times) and stores
it in 8 bits (int8 entries, one fp16 scale per codebook; ``codebook_bits=16``: fp16).
Everything stored counts in the rate.

Deviation from the paper: one codebook per layer, where the paper has one per block of
columns (256 columns in its setting) and group of rows: the codec contract codes vectors
without knowing their column. On the reference model a layer has 384 or 1032 inputs,
about 1.5 to 4 of the paper's blocks.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import CodecError, CodecOption, Codes, register_codec
from .kmeans import WEIGHTINGS, KMeansCodec, index_bits_for

CODEBOOK_BITS = (8, 16)


def round_codebook(codebook: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(stored codebook, its fp16 scale or None, the codebook it decodes to)``.

    8 bits: int8 entries times one fp16 scale ``absmax / 127``; 16 bits: fp16 entries."""
    c = codebook.float()
    if bits == 16:
        h = c.half()
        return h, None, h.float()
    s = (c.abs().amax() / 127.0).clamp_min(2.0**-24).half()
    q = torch.round(c / s.float()).clamp(-127, 127).to(torch.int8)
    return q, s.reshape(1), q.float() * s.float()


class GPTVQCodec(KMeansCodec):
    """K-means codebook of ``2^index_bits`` centroids of D, stored in ``codebook_bits`` bits,
    with a per-group RMS scale; ``update_rounds`` codebook updates after assignment."""

    name: ClassVar[str] = "gptvq"

    def __init__(
        self,
        index_bits: int,
        dim: int = 2,
        group_weights: int = 256,
        *,
        codebook: torch.Tensor | None = None,
        iters: int = 20,
        seed: int = 0,
        init: str = "kmeans++",
        weighting: str = "hessian",
        codebook_bits: int = 8,
        update_rounds: int = 2,
    ) -> None:
        if codebook_bits not in CODEBOOK_BITS:
            raise CodecError(f"codebook_bits must be one of {CODEBOOK_BITS}, got {codebook_bits!r}")
        if not isinstance(update_rounds, int) or isinstance(update_rounds, bool) or update_rounds < 0:
            raise CodecError(f"update_rounds must be an integer >= 0, got {update_rounds!r}")
        super().__init__(index_bits, dim, group_weights, codebook=None, iters=iters, seed=seed, init=init,
                         weighting=weighting)
        self.codebook_bits = codebook_bits
        self.update_rounds = update_rounds
        if codebook is not None:
            if codebook.shape != (self.num_centroids, dim):
                raise CodecError(f"codebook must have shape {(self.num_centroids, dim)}, got {tuple(codebook.shape)}")
            codebook = round_codebook(codebook, codebook_bits)[2]
        self.codebook = codebook

    def config(self) -> dict:
        return {**super().config(), "codebook_bits": self.codebook_bits, "update_rounds": self.update_rounds}

    def fit(self, x: torch.Tensor, scale: torch.Tensor, importance: torch.Tensor | None = None) -> GPTVQCodec:
        return GPTVQCodec(**self.config(), codebook=self.fit_codebook(x, scale, importance))

    def data_tensors(self) -> dict[str, torch.Tensor]:
        if self.codebook is None:
            raise CodecError("this GPTVQ codec has no codebook yet; call fit() first")
        stored, scale, _ = round_codebook(self.codebook, self.codebook_bits)
        return {"codebook": stored} if scale is None else {"codebook": stored, "codebook_scale": scale}

    def with_data(self, stored: dict[str, torch.Tensor]) -> GPTVQCodec:
        if "codebook" not in stored:
            raise CodecError("the stored tensors lack the GPTVQ 'codebook'")
        cb = stored["codebook"]
        if cb.shape != (self.num_centroids, self.dim):
            raise CodecError(f"stored codebook has shape {tuple(cb.shape)}, need {(self.num_centroids, self.dim)}")
        if self.codebook_bits == 8:
            if "codebook_scale" not in stored:
                raise CodecError("the stored tensors lack the GPTVQ 'codebook_scale' of its int8 codebook")
            values = cb.float() * stored["codebook_scale"].float().reshape(())
        else:
            values = cb.float()
        return GPTVQCodec(**self.config(), codebook=values)

    # -- codebook update (pvq.solvers.codebook_update)
    def trainable_data(self) -> dict[str, torch.Tensor]:
        return {"codebook": self._codebook("cpu" if self.codebook is None else self.codebook.device).float()}

    def decode_trainable(self, data: dict[str, torch.Tensor], codes: Codes, scale: torch.Tensor) -> torch.Tensor:
        index = codes["index"]
        return data["codebook"].to(index.device)[index] * scale.float().to(index.device).reshape(-1, 1)

    def with_trainable(self, data: dict[str, torch.Tensor]) -> GPTVQCodec:
        return GPTVQCodec(**self.config(), codebook=data["codebook"].detach())

    def nominal_bits_per_weight(self) -> float:
        """Index and scale bits per weight; the codebook is shared and not included."""
        return self.index_bits / self.dim + 16.0 / self.group_weights

    def codebook_bits_total(self) -> int:
        return self.codebook_bits * self.num_centroids * self.dim + (16 if self.codebook_bits == 8 else 0)

    def describe(self) -> str:
        return (f"gptvq(k=2^{self.index_bits}, D={self.dim}, group={self.group_weights} weights, "
                f"codebook {self.codebook_bits} bits)")


@register_codec(
    "gptvq", "GPTVQ: Hessian-weighted K-means codebook (8-bit, stored), updated after LDLQ assignment", 2,
    dims=(1, 2, 4, 8),
    options=(
        CodecOption("codebook_precision", int, 8,
                    "bits of each stored codebook entry: 8 (int8 + one fp16 scale, the paper's) or 16 (fp16)",
                    CODEBOOK_BITS),
        CodecOption("update_rounds", int, 2, "codebook updates after assignment (codes reassigned between them)"),
        CodecOption("em_weighting", str, "hessian", "EM (K-means) importances: hessian (diag H), obs or none",
                    WEIGHTINGS),
    ),
)
def gptvq_from_rate(bits: float, dim: int, em_weighting: str = "hessian", codebook_precision: int | None = None,
                    **options) -> GPTVQCodec:
    """``gptvq`` with ``2^round(bits * dim)`` centroids (``codebook_precision``: the entries' bits)."""
    if codebook_precision is not None:
        options["codebook_bits"] = codebook_precision
    return GPTVQCodec(index_bits_for(bits, dim), dim, weighting=em_weighting, **options)
