"""Hessian-aware quantization of one linear layer with any vector codec (block LDLQ / GPTQ).

Layout. ``W: [out, in]``. A vector is ``D = codec.dim`` consecutive input
columns of one row; a group is ``G`` consecutive vectors of one row that share
one fp16 scale (``G * D`` columns). Reshaped row-major, ``W.reshape(-1, D)`` is
exactly the flat source of :func:`pvq.codecs.base.quantize_grouped`, so the
merged codes and scales of a :class:`LayerResult` store like that flow's.

Algorithm. With ``H^-1 = U^T U`` (``U`` upper triangular, float64), column
blocks of ``block_dim`` (a multiple of ``D``; by default ``D``) are quantized in
order. At the first block of each group the group's scale is computed by
``codec.group_scales`` from the current, error-updated weights of the whole
group. After a block ``B`` is quantized, its error is pushed onto the columns
``R`` not yet quantized::

    W[:, R] -= (W[:, B] - Q[:, B]) @ inv(U[B, B]) @ U[B, R]

which minimizes ``tr((W - Q) H (W - Q)^T)`` over the remaining columns
(GPTQ for ``D = 1``; LDLQ with vector blocks). The fast path defers the update
of far columns to one matrix product per chunk of about ``lazy_columns``
columns (whole groups, so every group's scale still sees fully updated
weights); :func:`quantize_layer_reference` applies every update at once.

Group parameters. The scale (and, for codecs with an offset grid, the zero
point) of each group comes from ``codec.group_scales`` /
``codec.group_zero_points`` on the whole group; every slice of the group is
then coded through ``codec.encode_decode`` with its per-vector scale and zero.

Hessian hook. If ``hessian_gain`` is on and the codec has a method
``encode_hessian(x, scale, h_blk)``, it is used (through ``encode_decode``'s
``hessian=``) for each D-column slice of a block, with
``x: [out, D]`` float32, ``scale: [out]`` and ``h_blk: [D, D]`` float32, the
quadratic form that the slice's error ``e`` (a row) costs, ``e h_blk e^T``:

* with error feedback, the D x D diagonal block of ``(U_BB^T U_BB)^-1``, i.e.
  the block of the damped Hessian after the later columns have absorbed the
  error (the Schur complement ``H_BB - H_BR H_RR^-1 H_RB`` of the later
  columns ``R``; for the last block it is ``H_BB``);
* without error feedback, the diagonal block ``H[B, B]`` of the damped Hessian.

PVQ uses it for Hessian-optimal gains ``s* = v^T h w / v^T h v``. The returned
codes must decode with the ordinary ``decode``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from pvq.codecs.base import Codes, Stored, VectorCodec, fp16_exact
from pvq.errors import SolverError

from .hessian import damp, dead_inputs, inverse_cholesky_upper

__all__ = ["LayerResult", "act_order_permutation", "quantize_layer", "quantize_layer_reference", "proxy_loss"]

Progress = Callable[[int, int], None]
"""``progress(columns_done, columns_total)``, called after every block."""


@dataclass
class LayerResult:
    """Result of :func:`quantize_layer`.

    weight: dequantized ``Q: [out, in]`` float32.
    codes: codes of each column block, in column order; block ``b`` holds the
        ``out * block_dim / D`` vectors of its columns, row-major (row, then vector).
    scales: group scales ``[out, in / (D * G)]`` float32, fp16-exact.
    zeros: group zero points ``[out, in / (D * G)]`` int64, or None (no offset grid).
    codec: the codec that coded.
    proxy_loss: ``tr((W - Q) H (W - Q)^T)`` with the undamped ``H``.
    relative_error: ``proxy_loss / tr(W H W^T)``.
    seconds: wall time of the solve.
    """

    weight: torch.Tensor
    codes: list[Codes]
    scales: torch.Tensor
    zeros: torch.Tensor | None
    codec: VectorCodec
    proxy_loss: float
    relative_error: float
    seconds: float
    dim: int
    group_size: int
    block_dim: int

    def merged_codes(self) -> Codes:
        """All codes as one :data:`Codes` of ``out * in / D`` vectors in row-major order
        (the order of ``Q.reshape(-1, D)``)."""
        out = self.weight.shape[0]
        merged: Codes = {}
        for key in self.codes[0]:
            parts = [c[key].reshape(out, -1, *c[key].shape[1:]) for c in self.codes]
            cat = torch.cat(parts, dim=1)
            merged[key] = cat.reshape(-1, *cat.shape[2:])
        return merged

    def per_vector_scales(self) -> torch.Tensor:
        """Scale of every vector, ``[out * in / D]`` in row-major order."""
        return self.scales.reshape(-1).repeat_interleave(self.group_size)

    def stored(self) -> Stored:
        """The tensors to write (packed codes, fitted data, fp16 scales), from which the rate is measured."""
        return Stored(self.codec.store(self.merged_codes(), self.scales), num_weights=self.weight.numel())


def proxy_loss(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    """``tr((W - Q) H (W - Q)^T)`` in float64: row sums, then their exactly rounded total
    (``math.fsum``), so the figure does not depend on the thread count (a whole-tensor
    ``sum`` splits across threads)."""
    e = w.double() - q.double()
    return math.fsum(((e @ h.double().to(e.device)) * e).sum(1).tolist())


# ------------------------------------------------------------------ checks


@dataclass(frozen=True)
class _Layout:
    out: int
    inp: int
    dim: int
    group_size: int
    block_dim: int

    @property
    def group_cols(self) -> int:
        return self.dim * self.group_size


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _check(w, h, codec, block_dim, group_size) -> _Layout:
    needed = ("dim", "group_size", "group_scales", "group_zero_points", "encode_decode", "decode", "store")
    if not all(hasattr(codec, a) for a in needed):
        raise SolverError(f"codec must be a VectorCodec, got {type(codec).__name__}")
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        got = getattr(w, "shape", w)
        raise SolverError(f"weight must be a float tensor [out, in], got {got!r}")
    if not torch.isfinite(w).all():
        raise SolverError("weight holds NaN or inf; clean it before quantizing")
    out, inp = w.shape
    if not isinstance(h, torch.Tensor) or tuple(h.shape) != (inp, inp):
        raise SolverError(
            f"Hessian must be [{inp}, {inp}] for a weight with {inp} inputs, "
            f"got {tuple(getattr(h, 'shape', ()))}"
        )
    d = codec.dim
    g = codec.group_size if group_size is None else group_size
    b = d if block_dim is None else block_dim
    if not isinstance(g, int) or g < 1:
        raise SolverError(f"group size must be a positive integer, got {g!r}")
    if inp % d:
        raise SolverError(
            f"in_features={inp} is not a multiple of the codec's vector dim D={d}; "
            f"choose a D that divides {inp}"
        )
    if inp % (d * g):
        ok = _divisors(inp // d)
        raise SolverError(
            f"in_features={inp} does not split into groups of G={g} vectors of D={d} "
            f"({d * g} columns); group sizes that divide it at D={d}: {ok}"
        )
    gc = d * g
    if not isinstance(b, int) or b < d or b % d or (gc % b and b % gc) or inp % b:
        raise SolverError(
            f"block_dim={b!r} must be a multiple of D={d} that divides the group width {gc} "
            f"or is a multiple of it, and divides in_features={inp}"
        )
    return _Layout(out, inp, d, g, b)


# ------------------------------------------------------------------ one block


def _effective_blocks(
    u: torch.Tensor | None, h: torch.Tensor, c0: int, c1: int, d: int, feedback: bool
) -> list[torch.Tensor]:
    """The D x D quadratic forms passed to ``encode_hessian`` for the slices of block [c0, c1)."""
    if feedback:
        ubb = u[c0:c1, c0:c1]
        eye = torch.eye(c1 - c0, dtype=u.dtype, device=u.device)
        uinv = torch.linalg.solve_triangular(ubb, eye, upper=True)
        s = uinv @ uinv.T  # (U_BB^T U_BB)^-1
    else:
        s = h[c0:c1, c0:c1]
    return [s[j : j + d, j : j + d].float() for j in range(0, c1 - c0, d)]


def _quantize_block(codec, lay: _Layout, w_blk, scales, zeros, c0, hook_blocks, col_group=None):
    """Quantize block columns [c0, c0 + block_dim): returns (q_blk [out, bd] float32, codes).

    col_group: group index of every column slot ``[in]`` (act-order: the slot's original
    column's group); None: slot ``c`` is in group ``c // (D * G)``."""
    d, out = lay.dim, lay.out
    k = w_blk.shape[1] // d
    gcols = lay.group_cols
    if col_group is None:
        gidx = torch.tensor([(c0 + j * d) // gcols for j in range(k)], device=scales.device)
    else:
        gidx = col_group[c0 : c0 + k * d : d].to(scales.device)
    sv = scales[:, gidx]  # [out, k]
    zv = None if zeros is None else zeros[:, gidx]
    x = w_blk.float()
    if hook_blocks is None:
        xv = x.reshape(out * k, d).contiguous()
        svf = sv.reshape(-1).contiguous()
        zvf = None if zv is None else zv.reshape(-1).contiguous()
        codes, q = codec.encode_decode(xv, svf, zvf)
        return q.float().reshape(out, k * d), codes
    parts, qs = [], []
    for j in range(k):
        xj = x[:, j * d : (j + 1) * d].contiguous()
        sj = sv[:, j].contiguous()
        zj = None if zv is None else zv[:, j].contiguous()
        cj, qj = codec.encode_decode(xj, sj, zj, hook_blocks[j])
        parts.append(cj)
        qs.append(qj.float())
    q = torch.cat(qs, dim=1)
    if k == 1:
        return q, parts[0]
    codes = {
        key: torch.stack([p[key] for p in parts], dim=1).reshape(out * k, *parts[0][key].shape[1:])
        for key in parts[0]
    }
    return q, codes


def _group_params(codec, lay: _Layout, w: torch.Tensor, c0: int, c1: int, scales, zeros) -> None:
    """Set the scales (and zero points) of the groups that start in columns [c0, c1) from the current ``w``."""
    gc = lay.group_cols
    for gs in range((c0 + gc - 1) // gc * gc, c1, gc):
        grp = w[:, gs : gs + gc].float().reshape(lay.out, lay.group_size, lay.dim)
        s = codec.group_scales(grp)
        if tuple(s.shape) != (lay.out,):
            raise SolverError(
                f"{type(codec).__name__}.group_scales returned shape {tuple(s.shape)}, "
                f"expected [{lay.out}]"
            )
        scales[:, gs // gc] = fp16_exact(s)
        if zeros is not None:
            zeros[:, gs // gc] = codec.group_zero_points(grp)


def _static_group_params(codec, lay: _Layout, w: torch.Tensor, scales, zeros) -> None:
    """Set every group's scale (and zero point) from ``w`` before the sweep (static groups)."""
    _group_params(codec, lay, w, 0, lay.inp, scales, zeros)


def act_order_permutation(h: torch.Tensor, dim: int) -> torch.Tensor:
    """Column order of act-order: whole vectors of ``dim`` columns by decreasing Hessian
    diagonal (summed over the vector), ties in column order. ``[in]`` int64 column indices."""
    diag = torch.diagonal(h).double().reshape(-1, dim).sum(dim=1)
    order = torch.argsort(-diag, stable=True)
    cols = (order.unsqueeze(1) * dim + torch.arange(dim, device=order.device)).reshape(-1)
    return cols


def _unpermute(lay: _Layout, q, codes: list[Codes], perm) -> tuple[torch.Tensor, list[Codes]]:
    """Undo the act-order permutation of ``q`` and of the codes (one merged block, row-major)."""
    inv = torch.argsort(perm)
    out, nvec = lay.out, lay.inp // lay.dim
    vperm = perm[:: lay.dim] // lay.dim  # slot -> original vector
    vinv = torch.argsort(vperm)
    merged: Codes = {}
    for key in codes[0]:
        parts = [c[key].reshape(out, -1, *c[key].shape[1:]) for c in codes]
        cat = torch.cat(parts, dim=1)[:, vinv.to(parts[0].device)]
        merged[key] = cat.reshape(out * nvec, *cat.shape[2:])
    return q[:, inv.to(q.device)].contiguous(), [merged]


# ------------------------------------------------------------------ driver


@dataclass
class _Work:
    """The state of one solve: weights being updated (in sweep order), factors, group parameters."""

    lay: _Layout
    hd: torch.Tensor | None  # the damped Hessian; None with error feedback (U is all the sweep reads)
    wk: torch.Tensor
    u: torch.Tensor | None
    hook: bool
    scales: torch.Tensor
    zeros: torch.Tensor | None
    static: bool  # group parameters set before the sweep
    perm: torch.Tensor | None  # act-order column order (slot -> original column), or None
    col_group: torch.Tensor | None  # group of every column slot, or None (slot order = column order)


def _prepare(w, h, codec, block_dim, group_size, error_feedback, damp_rel, work_dtype, hessian_gain,
             static_groups=False, act_order=False) -> _Work:
    lay = _check(w, h, codec, block_dim, group_size)
    if work_dtype not in (torch.float32, torch.float64):
        raise SolverError(f"work_dtype must be torch.float32 or torch.float64, got {work_dtype}")
    for name, v in (("static_groups", static_groups), ("act_order", act_order)):
        if not isinstance(v, bool):
            raise SolverError(f"{name} must be True or False, got {v!r}")
    wk = w.to(work_dtype).clone()
    u = hd = None
    if error_feedback:
        wk[:, dead_inputs(h.to(torch.float64)).to(wk.device)] = 0.0
    hook = bool(hessian_gain) and callable(getattr(codec, "encode_hessian", None))
    n_groups = lay.inp // lay.group_cols
    scales = torch.zeros(lay.out, n_groups, dtype=torch.float32, device=wk.device)
    probe = w[:1, : lay.group_cols].float().reshape(1, lay.group_size, lay.dim)
    zeros = None
    if codec.group_zero_points(probe) is not None:
        zeros = torch.zeros(lay.out, n_groups, dtype=torch.int64, device=wk.device)
    static = static_groups or act_order  # act-order keeps groups contiguous: their parameters come first
    if static:
        _static_group_params(codec, lay, wk, scales, zeros)
    perm = col_group = None
    if act_order:
        perm = act_order_permutation(h, lay.dim).to(wk.device)
        col_group = (perm // lay.group_cols).to(torch.int64)
        wk = wk[:, perm].contiguous()
    if error_feedback:
        # the damped Hessian goes in as a temporary that only the factorization holds, so it is freed
        # before the inverse is formed: [in, in] float64 matrices alive at the peak here are h, the
        # factor and the inverse (down_proj of a 70B: 6.1 GiB each)
        u = inverse_cholesky_upper(_damped(h, damp_rel, perm, wk.device)).to(wk.device)
    else:
        hd = _damped(h, damp_rel, perm, wk.device).to(wk.device)
    return _Work(lay, hd, wk, u, hook, scales, zeros, static, perm, col_group)


def _damped(h: torch.Tensor, damp_rel: float, perm: torch.Tensor | None, device) -> torch.Tensor:
    """The damped ``h``; with ``perm`` (act-order), on ``device`` with rows and columns in that order."""
    hd = damp(h, damp_rel)
    return hd if perm is None else hd.to(device)[perm][:, perm].contiguous()


def _finish(w, h, q, codes, scales, zeros, codec, lay, t0) -> LayerResult:
    loss = proxy_loss(w, q, h)
    ref = proxy_loss(w, torch.zeros_like(w), h)
    rel = loss / ref if ref > 0 else (0.0 if loss == 0 else math.inf)
    return LayerResult(
        weight=q,
        codes=codes,
        scales=scales,
        zeros=zeros,
        codec=codec,
        proxy_loss=loss,
        relative_error=rel,
        seconds=time.perf_counter() - t0,
        dim=lay.dim,
        group_size=lay.group_size,
        block_dim=lay.block_dim,
    )


def quantize_layer(
    w: torch.Tensor,
    h: torch.Tensor,
    codec: VectorCodec,
    *,
    block_dim: int | None = None,
    group_size: int | None = None,
    error_feedback: bool = True,
    damp_rel: float = 0.01,
    progress: Progress | None = None,
    lazy_columns: int = 128,
    work_dtype: torch.dtype = torch.float32,
    hessian_gain: bool = True,
    static_groups: bool = False,
    act_order: bool = False,
) -> LayerResult:
    """Quantize ``w: [out, in]`` with ``codec`` under the proxy loss of ``h: [in, in]``.

    block_dim: columns quantized jointly between error updates (multiple of
        ``codec.dim``, default ``codec.dim``).
    group_size: vectors per scale group (default ``codec.group_size``).
    error_feedback: False gives plain per-vector quantization (RTN-style; the
        same result as ``quantize_grouped`` on ``w.reshape(-1, D)``).
    damp_rel: diagonal damping relative to the mean diagonal of ``h``.
    progress: ``progress(columns_done, columns_total)`` after each block.
    lazy_columns: target width of the lazily updated chunks (rounded to whole
        groups and blocks); does not change the result beyond float rounding.
    work_dtype: dtype of the weight updates (float32; float64 for references).
    hessian_gain: use the codec's ``encode_hessian`` where it has one.
    static_groups: every group's scale and zero point from the original weights
        before the sweep (llm-compressor's and GPTQ's ``static_groups``); off: from
        the error-updated weights when the sweep reaches the group.
    act_order: sweep whole vectors by decreasing Hessian diagonal (GPTQ's
        ``desc_act``) with static groups, so the stored layout stays group-contiguous.

    With error feedback, input columns with ``h_ii == 0`` (never active) are
    zeroed before quantization, as GPTQ does.
    """
    t0 = time.perf_counter()
    wo = _prepare(w, h, codec, block_dim, group_size, error_feedback, damp_rel, work_dtype, hessian_gain,
                  static_groups, act_order)
    lay, hd, wk, u, hook, scales, zeros = wo.lay, wo.hd, wo.wk, wo.u, wo.hook, wo.scales, wo.zeros
    if not isinstance(lazy_columns, int) or lazy_columns < 1:
        raise SolverError(f"lazy_columns must be a positive integer, got {lazy_columns!r}")
    bd = lay.block_dim
    unit = max(bd, lay.group_cols)  # both divide each other one way: unit = their lcm
    chunk = max(1, lazy_columns // unit) * unit
    uw = u.to(work_dtype) if u is not None else None
    q = torch.empty(lay.out, lay.inp, dtype=torch.float32, device=wk.device)
    codes: list[Codes] = []
    for a in range(0, lay.inp, chunk):
        b = min(a + chunk, lay.inp)
        err = None
        if uw is not None:
            err = torch.empty(lay.out, b - a, dtype=work_dtype, device=wk.device)
        for c0 in range(a, b, bd):
            c1 = c0 + bd
            if not wo.static:
                _group_params(codec, lay, wk, c0, c1, scales, zeros)
            hb = None
            if hook:
                hb = _effective_blocks(u, hd, c0, c1, lay.dim, error_feedback)
            qb, cb = _quantize_block(codec, lay, wk[:, c0:c1], scales, zeros, c0, hb, wo.col_group)
            q[:, c0:c1] = qb
            codes.append(cb)
            if uw is not None:
                e = torch.linalg.solve_triangular(
                    uw[c0:c1, c0:c1], wk[:, c0:c1] - qb.to(work_dtype), upper=True, left=False
                )
                err[:, c0 - a : c1 - a] = e
                if c1 < b:
                    wk[:, c1:b] -= e @ uw[c0:c1, c1:b]
            if progress is not None:
                progress(c1, lay.inp)
        if uw is not None and b < lay.inp:
            wk[:, b:] -= err @ uw[a:b, b:]
    if wo.perm is not None:
        q, codes = _unpermute(lay, q, codes, wo.perm)
    return _finish(w, h, q, codes, scales, zeros, codec, lay, t0)


def quantize_layer_reference(
    w: torch.Tensor,
    h: torch.Tensor,
    codec: VectorCodec,
    *,
    block_dim: int | None = None,
    group_size: int | None = None,
    error_feedback: bool = True,
    damp_rel: float = 0.01,
    work_dtype: torch.dtype = torch.float32,
    hessian_gain: bool = True,
    static_groups: bool = False,
    act_order: bool = False,
) -> LayerResult:
    """Plain reference of :func:`quantize_layer`: every block's error update is applied
    to all later columns at once (no lazy chunks)."""
    t0 = time.perf_counter()
    wo = _prepare(w, h, codec, block_dim, group_size, error_feedback, damp_rel, work_dtype, hessian_gain,
                  static_groups, act_order)
    lay, hd, wk, u, hook, scales, zeros = wo.lay, wo.hd, wo.wk, wo.u, wo.hook, wo.scales, wo.zeros
    uw = u.to(work_dtype) if u is not None else None
    q = torch.empty(lay.out, lay.inp, dtype=torch.float32, device=wk.device)
    codes: list[Codes] = []
    for c0 in range(0, lay.inp, lay.block_dim):
        c1 = c0 + lay.block_dim
        if not wo.static:
            _group_params(codec, lay, wk, c0, c1, scales, zeros)
        hb = _effective_blocks(u, hd, c0, c1, lay.dim, error_feedback) if hook else None
        qb, cb = _quantize_block(codec, lay, wk[:, c0:c1], scales, zeros, c0, hb, wo.col_group)
        q[:, c0:c1] = qb
        codes.append(cb)
        if uw is not None:
            e = torch.linalg.solve_triangular(
                uw[c0:c1, c0:c1], wk[:, c0:c1] - qb.to(work_dtype), upper=True, left=False
            )
            wk[:, c1:] -= e @ uw[c0:c1, c1:]
    if wo.perm is not None:
        q, codes = _unpermute(lay, q, codes, wo.perm)
    return _finish(w, h, q, codes, scales, zeros, codec, lay, t0)
