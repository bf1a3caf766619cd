"""Trellis-coded quantization with a bitshift trellis, as QTIP does it (Tseng et al. 2024).

A vector is a sequence of ``T = dim`` weights. Each weight costs ``k`` bits: the stored
symbols ``c_t`` in ``[0, 2^k)``. The trellis state is an ``L``-bit word that shifts in one
symbol per weight, ``s_t = ((s_{t-1} << k) | c_t) mod 2^L``, so ``s_t`` holds the last
``ceil(L / k)`` symbols; weight ``t`` is reconstructed as ``scale * code(s_t)``, where
``code`` is a fixed table of ``2^L`` values computed from the state (no stored codebook):

* ``1mad`` (QTIP Alg. 1): ``x = (34038481 s + 76625530) mod 2^32``; the sum of its four
  bytes, minus 510, over 147.8 (about a unit Gaussian by the central limit theorem);
* ``3inst`` (QTIP Alg. 2): ``x = (89226354 s + 64248484) mod 2^32``; keep the sign bit and
  12 low bits of each 16-bit half, XOR with ``0x3B603B60``, read both halves as fp16 and
  add them.

Both tables are divided by their RMS over the ``2^L`` states (so ``scale`` is in units of
the source RMS). Encoding is Viterbi (least squared error over all symbol sequences).

Tail-biting (QTIP's two passes): the symbols are read circularly, so ``s_0`` holds the last
symbols of the sequence and exactly ``T k`` bits are stored per vector. Pass 1 runs a free
Viterbi on the sequence rotated by ``T // 2``; the ``L - k`` history bits of its state at
weight 0 fix ``o``. Pass 2 runs Viterbi on the sequence with the start state constrained to
``s_0 >> k = o`` and the end state to ``s_{T-1} mod 2^(L-k) = o``: a valid circular path,
not always the best one (:func:`viterbi_tailbiting_exact` tries every ``o``: on Gaussian
data, L = 8, k = 2, the two passes cost 3.2% more at T = 32 and nothing measurable at
T = 256).

Each group of ``group_size`` sequences shares one fp16 scale ``RMS(group) * scale_factor``.
Decoding recomputes the states from the symbols by shifting bits.

:func:`viterbi` is the vectorized torch search (batch x ``2^L`` states);
:func:`viterbi_reference` is a plain loop version, and the tests check both against
exhaustive search over all symbol sequences on short sequences with small ``L``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from .base import (
    CodecError,
    CodecOption,
    Codes,
    VectorCodec,
    check_scales,
    check_vectors,
    fp16_exact,
    register_codec,
)
from .packing import pack_bits, unpack_bits

OPTIONS = (
    CodecOption("state_bits", int, 16, "trellis state bits L (QTIP: 16); Viterbi costs about T * 2^L per sequence"),
    CodecOption("code", str, "1mad", "computed Gaussian code reconstructing a weight from its state (QTIP's 1MAD "
                "or 3INST)", ("1mad", "3inst")),
)
CODES = OPTIONS[1].choices

# scale / RMS(group) with the least MSE on i.i.d. Gaussian sequences (1MAD, L = 12, T = 256,
# 64 sequences, seed 0; grid 0.8..1.5): MSE is flat within 1% over +-0.05 around these
_SCALE_FACTOR = {1: 0.88, 2: 1.04, 3: 1.12, 4: 1.15}


# ================================================================ computed codes


def _code_1mad(states: np.ndarray) -> np.ndarray:
    x = (states.astype(np.uint64) * np.uint64(34038481) + np.uint64(76625530)) & np.uint64(0xFFFFFFFF)
    total = sum(((x >> np.uint64(8 * i)) & np.uint64(255)).astype(np.int64) for i in range(4))
    return (total - 510).astype(np.float64) / 147.800537109375


def _code_3inst(states: np.ndarray) -> np.ndarray:
    x = (states.astype(np.uint64) * np.uint64(89226354) + np.uint64(64248484)) & np.uint64(0xFFFFFFFF)
    keep = np.uint64(0x8FFF8FFF)  # per 16-bit half: the sign bit and the 12 low bits
    res = ((x & keep) ^ np.uint64(0x3B603B60)).astype(np.uint32)
    halves = res.view(np.uint16).reshape(-1, 2).view(np.float16).astype(np.float64)
    return halves.sum(axis=1)


@lru_cache(maxsize=None)
def _code_table_np(state_bits: int, code: str) -> np.ndarray:
    states = np.arange(1 << state_bits, dtype=np.uint64)
    raw = {"1mad": _code_1mad, "3inst": _code_3inst}[code](states)
    return raw / math.sqrt(float(np.mean(raw**2)))


def code_table(state_bits: int, code: str) -> torch.Tensor:
    """Reconstruction value of every state, ``[2^L]`` float32, unit RMS over the states."""
    if code not in CODES:
        raise CodecError(f"unknown trellis code {code!r}; choose one of {', '.join(CODES)}")
    return torch.from_numpy(_code_table_np(state_bits, code)).float()


# ================================================================ Viterbi


def _check_trellis(state_bits: int, k: int, T: int) -> None:
    if not isinstance(state_bits, int) or not 2 <= state_bits <= 20:
        raise CodecError(f"state_bits L must be an integer in [2, 20], got {state_bits!r}")
    if not isinstance(k, int) or not 1 <= k < state_bits or k > 8:
        raise CodecError(f"bits per weight k must be an integer in [1, min(8, L - 1)] (L={state_bits}), got {k!r}")
    if T * k < state_bits:
        raise CodecError(
            f"a sequence of T={T} weights at k={k} bits holds {T * k} bits, fewer than the state's "
            f"L={state_bits}; use longer sequences (dim) or fewer state bits"
        )


def viterbi(
    x: torch.Tensor,
    values: torch.Tensor,
    k: int,
    start: torch.Tensor | None = None,
    end: torch.Tensor | None = None,
    batch_bytes: int = 1 << 28,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares state path through the bitshift trellis, vectorized over sequences.

    x: ``[B, T]`` float32 targets; values: ``[2^L]`` reconstruction per state; k bits per step.
    start / end: optional ``[B]`` int64 ``o`` in ``[0, 2^(L-k))``: constrain ``s_0 >> k = o`` and
    ``s_{T-1} mod 2^(L-k) = o``. Returns (states ``[B, T]`` int64, cost ``[B]`` float32).
    Rows are processed in chunks so the backpointers (``T * 2^(L-k)`` bytes per row) stay
    below ``batch_bytes``.
    """
    nstates = values.shape[0]
    L = nstates.bit_length() - 1
    B, T = x.shape
    _check_trellis(L, k, T)
    per_row = T * (nstates >> k)
    chunk = max(1, batch_bytes // per_row)
    states, costs = [], []
    for a in range(0, B, chunk):
        sl = slice(a, a + chunk)
        s, c = _viterbi_chunk(
            x[sl].float(), values.float().to(x.device), k, L,
            None if start is None else start[sl], None if end is None else end[sl],
        )
        states.append(s)
        costs.append(c)
    if not states:
        return torch.zeros(0, T, dtype=torch.int64), torch.zeros(0)
    return torch.cat(states), torch.cat(costs)


def _viterbi_chunk(x, values, k, L, start, end):
    B, T = x.shape
    nprev = 1 << (L - k)  # number of history values o = s >> k
    fan = 1 << k
    inf = torch.tensor(float("inf"), device=x.device)
    cost = (x[:, :1] - values.unsqueeze(0)) ** 2  # [B, 2^L]
    if start is not None:
        hist = torch.arange(1 << L, device=x.device) >> k
        cost = torch.where(hist.unsqueeze(0) == start.unsqueeze(1), cost, inf)
    back = torch.empty(T, B, nprev, dtype=torch.uint8, device=x.device)
    for t in range(1, T):
        # predecessor of s: p = j * 2^(L-k) + (s >> k), j in [0, 2^k)
        best, arg = cost.view(B, fan, nprev).min(dim=1)  # [B, 2^(L-k)]
        back[t] = arg.to(torch.uint8)
        err = (x[:, t : t + 1] - values.unsqueeze(0)) ** 2
        cost = err + best.unsqueeze(2).expand(B, nprev, fan).reshape(B, 1 << L)
    if end is not None:
        low = torch.arange(1 << L, device=x.device) & (nprev - 1)
        cost = torch.where(low.unsqueeze(0) == end.unsqueeze(1), cost, inf)
    final_cost, s = cost.min(dim=1)
    states = torch.empty(B, T, dtype=torch.int64, device=x.device)
    states[:, T - 1] = s
    rows = torch.arange(B, device=x.device)
    for t in range(T - 1, 0, -1):
        o = s >> k
        j = back[t][rows, o].to(torch.int64)
        s = (j << (L - k)) | o
        states[:, t - 1] = s
    return states, final_cost


def viterbi_reference(
    x: list[float], values: list[float], k: int, start: int | None = None, end: int | None = None
) -> tuple[list[int], float]:
    """Plain loop Viterbi for one sequence (Python floats): (states, cost). Same constraints as
    :func:`viterbi`; ties go to the smallest predecessor / final state."""
    n = len(values)
    L = n.bit_length() - 1
    mask = (1 << (L - k)) - 1
    inf = math.inf
    cost = [
        (x[0] - values[s]) ** 2 if start is None or (s >> k) == start else inf for s in range(n)
    ]
    backs = []
    for t in range(1, len(x)):
        new, back = [inf] * n, [0] * n
        for s in range(n):
            o = s >> k
            best, bj = inf, 0
            for j in range(1 << k):
                c = cost[(j << (L - k)) | o]
                if c < best:
                    best, bj = c, j
            new[s] = best + (x[t] - values[s]) ** 2
            back[s] = (bj << (L - k)) | o
        cost = new
        backs.append(back)
    final = [c if end is None or (s & mask) == end else inf for s, c in enumerate(cost)]
    s = min(range(n), key=final.__getitem__)
    path = [s]
    for back in reversed(backs):
        s = back[s]
        path.append(s)
    return path[::-1], min(final)


def viterbi_tailbiting(x: torch.Tensor, values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """QTIP's two-pass tail-biting Viterbi (see the module docs): (states ``[B, T]``, cost ``[B]``)."""
    T = x.shape[1]
    half = T // 2
    rolled, _ = viterbi(torch.roll(x, half, dims=1), values, k)
    o = rolled[:, half] >> k  # history bits of the state at weight 0
    return viterbi(x, values, k, start=o, end=o)


def viterbi_tailbiting_exact(x: torch.Tensor, values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best circular path: one constrained Viterbi per history value ``o`` (``2^(L-k)`` runs;
    a reference for small L)."""
    L = values.shape[0].bit_length() - 1
    B = x.shape[0]
    best_s = best_c = None
    for o in range(1 << (L - k)):
        oo = torch.full((B,), o, dtype=torch.int64)
        s, c = viterbi(x, values, k, start=oo, end=oo)
        if best_c is None:
            best_s, best_c = s, c
        else:
            better = c < best_c
            best_s = torch.where(better.unsqueeze(1), s, best_s)
            best_c = torch.where(better, c, best_c)
    return best_s, best_c


def states_from_symbols(symbols: torch.Tensor, k: int, state_bits: int) -> torch.Tensor:
    """Circular bitshift states ``[N, T]`` of symbols ``[N, T]`` in ``[0, 2^k)``:
    ``s_t = sum_j c_{(t-j) mod T} << (k j)`` mod ``2^L``."""
    s = torch.zeros_like(symbols)
    for j in range(-(-state_bits // k)):
        s = s | (torch.roll(symbols, j, dims=1) << (k * j))
    return s & ((1 << state_bits) - 1)


# ================================================================ the codec


class TrellisCodec(VectorCodec):
    """Bitshift-trellis codec: sequences of ``dim`` weights at ``k`` bits per weight, ``L`` state
    bits, a computed code; tail-biting (exactly ``dim * k`` bits per sequence) plus one fp16
    scale per group of ``group_size`` sequences. Codes ``{"symbols": [N, dim] int64}``."""

    name = "trellis"

    def __init__(
        self,
        k: int = 2,
        dim: int = 256,
        state_bits: int = 16,
        code: str = "1mad",
        group_size: int = 1,
        scale_factor: float | None = None,
    ) -> None:
        if not isinstance(dim, int) or dim < 2:
            raise CodecError(f"dim (sequence length T) must be an integer >= 2, got {dim!r}")
        _check_trellis(state_bits, k, dim)
        if code not in CODES:
            raise CodecError(f"unknown trellis code {code!r}; choose one of {', '.join(CODES)}")
        if not isinstance(group_size, int) or group_size < 1:
            raise CodecError(f"group_size (sequences per scale) must be an integer >= 1, got {group_size!r}")
        if scale_factor is None:
            scale_factor = _SCALE_FACTOR.get(k, 1.0)
        if not (isinstance(scale_factor, (int, float)) and math.isfinite(scale_factor) and scale_factor > 0):
            raise CodecError(f"scale_factor must be a positive finite number, got {scale_factor!r}")
        self.k, self.dim, self.state_bits, self.code = k, dim, state_bits, code
        self.group_size = group_size
        self.scale_factor = float(scale_factor)
        self.values = code_table(state_bits, code)

    def config(self) -> dict:
        return {
            "k": self.k,
            "dim": self.dim,
            "state_bits": self.state_bits,
            "code": self.code,
            "group_size": self.group_size,
            "scale_factor": self.scale_factor,
        }

    def describe(self) -> str:
        return f"trellis(k={self.k}, L={self.state_bits}, {self.code}, T={self.dim}, G={self.group_size})"

    def nominal_bits_per_weight(self) -> float:
        return self.k + 16.0 / (self.dim * self.group_size)

    def group_scales(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[2] != self.dim:
            raise CodecError(f"group_scales takes [m, G, {self.dim}], got {tuple(x.shape)}")
        return fp16_exact(x.float().pow(2).mean(dim=(1, 2)).sqrt() * self.scale_factor)

    def _unit(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        check_scales(scale, x.shape[0])
        s = scale.float().to(x.device).unsqueeze(1)
        return torch.where(s > 0, x.float() / s.clamp_min(1e-30), torch.zeros_like(s))

    def encode(self, x: torch.Tensor, scale: torch.Tensor) -> Codes:
        check_vectors(x, self.dim)
        states, _ = viterbi_tailbiting(self._unit(x, scale), self.values.to(x.device), self.k)
        return {"symbols": states & ((1 << self.k) - 1)}

    def decode(self, codes: Codes, scale: torch.Tensor) -> torch.Tensor:
        sym = self._check_codes(codes)
        check_scales(scale, sym.shape[0], encoding=False)
        states = states_from_symbols(sym, self.k, self.state_bits)
        return self.values.to(sym.device)[states] * scale.float().to(sym.device).unsqueeze(1)

    def _check_codes(self, codes: Codes) -> torch.Tensor:
        if set(codes) != {"symbols"}:
            raise CodecError(f"trellis codes must have the key 'symbols', got {sorted(codes)}")
        sym = codes["symbols"]
        if sym.dim() != 2 or sym.shape[1] != self.dim:
            raise CodecError(f"trellis symbols must have shape [n, {self.dim}], got {tuple(sym.shape)}")
        return sym

    def pack(self, codes: Codes) -> dict[str, torch.Tensor]:
        return {"symbols": pack_bits(self._check_codes(codes), self.k)}

    def unpack(self, stored: dict[str, torch.Tensor], n: int) -> Codes:
        if "symbols" not in stored:
            raise CodecError("stored trellis codes need the tensor 'symbols'")
        return {"symbols": unpack_bits(stored["symbols"], self.k, n * self.dim).view(n, self.dim)}


@register_codec(
    "trellis",
    "QTIP-style bitshift trellis (TCQ): L state bits, k bits per weight, computed 1MAD/3INST code, tail-biting",
    default_dim=256,
    options=OPTIONS,
)
def trellis_from_rate(
    bits: float,
    dim: int = 256,
    state_bits: int = OPTIONS[0].default,
    code: str = OPTIONS[1].default,
    group_size: int | None = None,
    group_weights: int | None = None,
    **options,
) -> TrellisCodec:
    """The trellis codec with ``k = round(bits - scale bits)`` bits per weight.

    group_size (sequences per scale, default 1) or group_weights (a multiple of dim).
    Options: scale_factor.
    """
    unknown = set(options) - {"scale_factor"}
    if unknown:
        raise CodecError(
            f"unknown trellis option(s) {sorted(unknown)}; trellis takes state_bits, code, group_size, "
            "group_weights, scale_factor"
        )
    if group_size is not None and group_weights is not None:
        raise CodecError("give group_size (sequences) or group_weights (weights), not both")
    if group_size is None:
        gw = dim if group_weights is None else group_weights
        if not isinstance(gw, int) or gw < dim or gw % dim:
            raise CodecError(f"group_weights must be a positive multiple of dim={dim}, got {gw!r}")
        group_size = gw // dim
    k = int(round(bits - 16.0 / (dim * group_size)))
    if k < 1:
        raise CodecError(f"trellis needs at least 1 bit per weight plus the scale; got {bits}: raise the rate")
    return TrellisCodec(k, dim, state_bits, code, group_size, **options)
