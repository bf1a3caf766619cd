"""Entropy-coded scalar quantization (ECSQ): a uniform quantizer whose codes are entropy coded.

Each weight ``x`` of a group of ``group_weights`` weights is coded as the
integer ``q`` with ``x ~ step * q``, where the group's step (its stored fp16
scale) is ``delta`` times the group's RMS. The codes of a layer are one ANS
stream with a static model (:mod:`pvq.codecs.entropy`; the symbol frequencies
are stored in the stream and counted in the rate), stored as the uint8 tensor
``"stream"``: the coded stream *is* the stored tensor, decoded by :meth:`unpack`.

Rounding is entropy-constrained: ``q`` minimizes ``(x/step - q)^2 + lam * L(q)``
with ``L(q) = -log2 p(q)`` the code length under the layer's symbol model
(:meth:`fit`, a few rounds of ECR and re-counted histograms) and ``lam`` tied
to the step (in step^2 units; default ``ln 2 / 6``, the slope ``-dD/dR`` of
uniform quantization at high rate). An optional dead zone widens the zero cell
by ``dead_zone`` steps on each side.

The rate is the *coded* rate. :meth:`fit` picks ``delta`` (when not given)
so that the layer's ECR codes meet ``bits`` per weight, scales and model
included; :meth:`retarget` corrects ``delta`` from the rate a solver measured
after error feedback (secant steps on ``log2 delta``).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch

from . import entropy
from .base import CodecError, CodecOption, Codes, VectorCodec, check_vectors, fp16_exact, register_codec

FP16_TINY = 2.0**-24
GAUSSIAN_ENTROPY = 0.5 * math.log2(2 * math.pi * math.e)  # h(N(0,1)) in bits
LAMBDA_HIGH_RATE = math.log(2.0) / 6.0
STREAM_KEY = "stream"
_MISSING_LEN = 24.0  # code length charged for a symbol the model never saw (bits)
_DESIGN_SAMPLE = 1 << 16


def ecr_round(u: torch.Tensor, lengths: torch.Tensor | None, offset: int, lam: float, dead_zone: float = 0.0) -> torch.Tensor:
    """Entropy-constrained rounding of ``u`` (in steps): ``argmin_q (u - q)^2 + lam * L(q)``.

    ``lengths[k]`` is the code length (bits) of symbol ``q = offset + k``; symbols outside
    the table cost :data:`_MISSING_LEN`. Candidates: floor, ceil, their outer neighbours and 0.
    ``lengths`` None: plain rounding. Ties go to the smaller |q|. Returns int64 like ``u``.
    """
    r = torch.round(u)
    if lengths is not None and lam > 0:
        f = torch.floor(u)
        cands = torch.stack([torch.zeros_like(u), f, f + 1, f - 1, f + 2], dim=-1)
        idx = (cands - offset).long()
        ok = (idx >= 0) & (idx < lengths.numel())
        lens = torch.where(ok, lengths.to(u.device)[idx.clamp(0, lengths.numel() - 1)],
                           torch.full_like(cands, _MISSING_LEN))
        cost = (u.unsqueeze(-1) - cands).pow(2) + lam * lens + 1e-9 * cands.abs()
        r = torch.gather(cands, -1, cost.argmin(dim=-1, keepdim=True)).squeeze(-1)
    if dead_zone > 0:
        r = torch.where(u.abs() < 0.5 + dead_zone, torch.zeros_like(r), r)
    return r.to(torch.int64)


def ecr_round_reference(u: list[float], lengths: list[float] | None, offset: int, lam: float,
                        dead_zone: float = 0.0) -> list[int]:
    """Plain reference of :func:`ecr_round` over Python floats (every integer in [-|u|-3, |u|+3])."""
    out = []
    for v in u:
        if lengths is None or lam <= 0:
            best = round(v)
        else:
            best, bc = 0, math.inf
            for q in sorted(range(math.floor(v) - 1, math.floor(v) + 3), key=abs) + [0]:
                k = q - offset
                ln = lengths[k] if 0 <= k < len(lengths) else _MISSING_LEN
                c = (v - q) ** 2 + lam * ln + 1e-9 * abs(q)
                if c < bc:
                    best, bc = q, c
        if dead_zone > 0 and abs(v) < 0.5 + dead_zone:
            best = 0
        out.append(int(best))
    return out


def code_lengths(q: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Empirical code lengths ``-log2 p`` (float32 table) of symbols ``q`` and the table's offset."""
    lo, hi = int(q.min()), int(q.max())
    counts = torch.bincount((q.reshape(-1) - lo), minlength=hi - lo + 1).double()
    p = counts / counts.sum()
    lens = torch.where(counts > 0, -torch.log2(p.clamp_min(1e-300)), torch.full_like(p, _MISSING_LEN))
    return lens.float(), lo


class EcsqCodec(VectorCodec):
    """Uniform scalar quantizer with entropy-coded codes (see the module docstring).

    bits: target coded rate per weight (scales and the symbol model included).
    delta: step relative to the group RMS (None: chosen by :meth:`fit` for ``bits``).
    ecr_lambda: Lagrangian of the entropy-constrained rounding, in step^2 per bit (0: plain rounding).
    dead_zone: extra half-width of the zero cell, in steps.
    """

    name: ClassVar[str] = "ecsq"
    entropy_coded: ClassVar[bool] = True  # its stored stream is coded: loaders decode it once to check it

    def __init__(self, bits: float, dim: int = 1, group_weights: int = 256, *, delta: float | None = None,
                 ecr_lambda: float = LAMBDA_HIGH_RATE, dead_zone: float = 0.0) -> None:
        if not (isinstance(bits, (int, float)) and math.isfinite(bits) and 0 < bits <= 12):
            raise CodecError(f"ecsq: bits must be a number in (0, 12], got {bits!r}")
        if not isinstance(dim, int) or dim < 1:
            raise CodecError(f"ecsq: dim must be a positive integer, got {dim!r}")
        if not isinstance(group_weights, int) or group_weights < dim or group_weights % dim:
            raise CodecError(f"ecsq: group_weights={group_weights!r} must be a positive multiple of dim={dim}")
        if delta is not None and not (math.isfinite(delta) and delta > 0):
            raise CodecError(f"ecsq: delta must be a positive number, got {delta!r}")
        if not (math.isfinite(ecr_lambda) and ecr_lambda >= 0):
            raise CodecError(f"ecsq: ecr_lambda must be >= 0, got {ecr_lambda!r}")
        if not (math.isfinite(dead_zone) and 0 <= dead_zone < 4):
            raise CodecError(f"ecsq: dead_zone must lie in [0, 4) steps, got {dead_zone!r}")
        self.bits = float(bits)
        self.dim = dim
        self.group_weights = group_weights
        self.group_size = group_weights // dim
        self.delta = None if delta is None else float(delta)
        self.ecr_lambda = float(ecr_lambda)
        self.dead_zone = float(dead_zone)
        self.lengths: torch.Tensor | None = None  # encoder's symbol model (from fit); not stored
        self.offset = 0
        self.history: tuple[tuple[float, float], ...] = ()  # (log2 delta, measured rate) of retarget

    def config(self) -> dict:
        return {"bits": self.bits, "dim": self.dim, "group_weights": self.group_weights, "delta": self.delta,
                "ecr_lambda": self.ecr_lambda, "dead_zone": self.dead_zone}

    def describe(self) -> str:
        d = "?" if self.delta is None else f"{self.delta:.4g}"
        return f"ecsq({self.bits:g} bits coded, delta={d}, lam={self.ecr_lambda:.3g}, group={self.group_weights})"

    @property
    def target_bits(self) -> float:
        return self.bits

    # ------------------------------------------------------------ group parameters

    def _step_delta(self) -> float:
        return self.delta if self.delta is not None else initial_delta(self.bits, self.group_weights)

    def group_scales(self, x: torch.Tensor) -> torch.Tensor:
        """Step of each group ``x: [m, G, D]``: ``delta * RMS`` (fp16-exact, > 0) -> ``[m]``."""
        rms = x.float().reshape(x.shape[0], -1).pow(2).mean(dim=1).sqrt()
        return fp16_exact(self._step_delta() * rms).clamp(min=FP16_TINY)

    # ------------------------------------------------------------ fit: step and symbol model

    @property
    def needs_fit(self) -> bool:
        return self.lengths is None

    def _copy(self, **changes) -> EcsqCodec:
        cfg = {**self.config(), **changes}
        out = EcsqCodec(**cfg)
        out.history = self.history
        return out

    def fit(self, x: torch.Tensor, scale: torch.Tensor, importance: torch.Tensor | None = None) -> EcsqCodec:
        """The codec with ``delta`` (when unset, by bisection on the coded rate of ECR codes
        of ``x / scale``) and the symbol model of its ECR codes. ``scale``: the per-vector
        steps that :meth:`group_scales` gave (they scale with ``delta``)."""
        check_vectors(x, self.dim)
        d0 = self._step_delta()
        unit = (x.float() / torch.where(scale > 0, scale, torch.ones_like(scale)).float().reshape(-1, 1)) * d0
        unit = unit.reshape(-1)  # x in units of the group RMS (scale = d0 * rms)
        if unit.numel() > _DESIGN_SAMPLE:
            g = torch.Generator().manual_seed(0)
            unit = unit[torch.randperm(unit.numel(), generator=g)[:_DESIGN_SAMPLE].to(unit.device)]
        n_all = x.numel()
        delta = self.delta
        if delta is None:  # secant on log2 delta (the rate falls about 1 bit per doubling)
            xa = math.log2(initial_delta(self.bits, self.group_weights))
            ra = self._design_rate(unit, 2.0**xa, n_all)[0]
            xb = xa + max(-2.0, min(2.0, ra - self.bits))
            for _ in range(8):
                rb = self._design_rate(unit, 2.0**xb, n_all)[0]
                if abs(rb - self.bits) < 1e-3:
                    break
                slope = (rb - ra) / (xb - xa) if xb != xa and (rb - ra) / (xb - xa) < -0.05 else -1.0
                xa, ra, xb = xb, rb, xb + max(-2.0, min(2.0, (self.bits - rb) / slope))
            delta = float(2.0**xb)
        out = self._copy(delta=delta)
        _, out.lengths, out.offset = out._design_rate(unit, delta, n_all)
        return out

    def _design_rate(self, unit: torch.Tensor, delta: float, n_all: int) -> tuple[float, torch.Tensor, int]:
        """Estimated coded bits per weight of ECR codes of ``unit / delta`` and their code lengths."""
        u = unit / delta
        q = ecr_round(u, None, 0, 0.0, self.dead_zone)
        for _ in range(3):
            lens, off = code_lengths(q)
            q = ecr_round(u, lens, off, self.ecr_lambda, self.dead_zone)
        lens, off = code_lengths(q)
        counts = torch.bincount(q - off).double()
        p = counts[counts > 0] / q.numel()
        h = float(-(p * torch.log2(p)).sum())
        overhead = (16.0 * lens.numel() + 8 * 64) / n_all + 16.0 / self.group_weights
        return h + overhead, lens, off

    def retarget(self, measured_bits: float) -> EcsqCodec | None:
        """A codec with ``delta`` moved toward the target after a solve measured ``measured_bits``
        per weight (None: close enough). Secant on ``log2 delta`` over the passes so far."""
        if self.delta is None or abs(measured_bits - self.bits) <= 0.002 * max(1.0, self.bits):
            return None
        x = math.log2(self.delta)
        hist = self.history + ((x, measured_bits),)
        slope = -1.0
        if len(hist) >= 2:
            (x0, r0), (x1, r1) = hist[-2], hist[-1]
            if x1 != x0 and (r1 - r0) / (x1 - x0) < -0.05:
                slope = (r1 - r0) / (x1 - x0)
        step = max(-1.0, min(1.0, (self.bits - measured_bits) / slope))
        out = self._copy(delta=2.0 ** (x + step))
        out.history = hist
        return out

    # ------------------------------------------------------------ codes

    def encode(self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None) -> Codes:
        """Codes ``q: [n, D]`` int64 of ``x: [n, D]`` with per-vector steps ``scale: [n]``."""
        check_vectors(x, self.dim)
        if scale.reshape(-1).shape[0] != x.shape[0]:
            raise CodecError(f"need one scale per vector ({x.shape[0]}), got {tuple(scale.shape)}")
        s = scale.float().to(x.device).reshape(-1, 1)
        u = x.float() / torch.where(s > 0, s, torch.ones_like(s))
        return {"q": ecr_round(u, self.lengths, self.offset, self.ecr_lambda, self.dead_zone)}

    def decode(self, codes: Codes, scale: torch.Tensor) -> torch.Tensor:
        q = codes["q"]
        return q.float() * scale.float().to(q.device).reshape(-1, 1)

    def pack(self, codes: Codes) -> dict[str, torch.Tensor]:
        blob = entropy.encode_symbols(codes["q"].cpu().numpy())
        return {STREAM_KEY: torch.frombuffer(bytearray(blob), dtype=torch.uint8)}

    def unpack(self, stored: dict[str, torch.Tensor], n: int) -> Codes:
        if STREAM_KEY not in stored:
            raise CodecError(f"ecsq: the stored tensors lack {STREAM_KEY!r}")
        blob = stored[STREAM_KEY].cpu().numpy().tobytes()
        if entropy.method_of(blob) != "symbols":
            raise entropy.CodedStreamError("ecsq stream is not a symbol stream (corrupt)")
        q = entropy.decode(blob)
        if q.shape != (n, self.dim):
            raise entropy.CodedStreamError(f"ecsq stream holds codes {q.shape}, expected ({n}, {self.dim}) (corrupt)")
        return {"q": torch.from_numpy(np.ascontiguousarray(q)).to(stored[STREAM_KEY].device)}

    def nominal_bits_per_weight(self) -> float:
        return self.bits


def initial_delta(bits: float, group_weights: int) -> float:
    """High-rate guess of the relative step for a Gaussian source: ``h(X) - log2 delta = R``."""
    code = max(bits - 16.0 / group_weights, 0.25)
    return float(2.0 ** (GAUSSIAN_ENTROPY - code))


@register_codec(
    "ecsq", "entropy-coded uniform scalar quantizer (ANS stream, entropy-constrained rounding, coded rate)", 1,
    options=(
        CodecOption("ecr_lambda", float, LAMBDA_HIGH_RATE, "Lagrangian of entropy-constrained rounding "
                    "(step^2 per bit; 0 = plain rounding)"),
        CodecOption("dead_zone", float, 0.0, "extra half-width of the zero cell, in steps"),
    ),
)
def ecsq_from_rate(bits: float, dim: int, **options) -> EcsqCodec:
    """``ecsq`` at a coded rate of ``bits`` per weight; options: group_weights, ecr_lambda, dead_zone, delta."""
    return EcsqCodec(float(bits), dim, **options)
