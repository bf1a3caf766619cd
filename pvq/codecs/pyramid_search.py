"""Projection onto the pyramid P(D, K): the shape search of the PVQ codec.

``pyramid_search_greedy`` (Opus/CELT: scale to K pulses, round down, then add the remaining
pulses one at a time where they raise the correlation most) and ``pyramid_search_refine``
(greedy, then single-pulse moves while they improve the cosine), each on ``x: [n, D]`` ->
integer points ``[n, D]`` with sum |y| = K; ``SEARCHES`` names them for the codec option.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch

from .base import CodecError
from .pyramid_counts import _check_dk

FILL_KERNELS: dict[str, Callable] = {}
"""Fast greedy fills by device type (``"cuda"``), registered by :mod:`pvq.kernels` where it can run
them: ``fill(ax [n, D] float64, y [n, D] int64, xy [n] float64, yy [n] float64, left [n] int64) ->
y [n, D] int64``, bit for bit :func:`_greedy_fill_loop`'s result (one launch instead of about 14 a
pulse). A kernel that fails is dropped with a warning and the loop runs instead."""


def pyramid_search_greedy(x: torch.Tensor, pulses: int) -> torch.Tensor:
    """Project ``x: [n, D]`` onto P(D, K) with the Opus/CELT rule. Returns int64 ``[n, D]``.

    Scale to L1 norm K and round down, then add the remaining pulses one at a
    time where they raise cos(x, y) most: the pulse goes to argmax_i
    (<|x|, y> + |x_i|)^2 / (<y, y> + 2 y_i + 1). Signs follow x. A zero vector
    gets all pulses on its first coordinate.
    """
    if x.dim() != 2:
        raise CodecError(f"x must have shape [n, D], got {tuple(x.shape)}")
    _check_dk(x.shape[1], pulses)
    ax = x.abs().double()
    l1 = ax.sum(1, keepdim=True)
    zero = (l1 == 0).squeeze(1)
    ax = torch.where(zero.unsqueeze(1), torch.nn.functional.one_hot(
        torch.zeros_like(zero, dtype=torch.int64), x.shape[1]).double(), ax)
    l1 = ax.sum(1, keepdim=True)
    y = torch.floor(ax * (pulses / l1)).to(torch.int64)
    y = y.clamp(min=0)
    # guard rounding: never exceed K
    over = y.sum(1) - pulses
    while bool((over > 0).any()):
        idx = torch.argmax(y * (over > 0).unsqueeze(1), dim=1)
        y[torch.arange(len(y)), idx] -= (over > 0).to(torch.int64)
        over = y.sum(1) - pulses
    y = _greedy_fill(ax, y, pulses)
    return torch.where(x < 0, -y, y)


def _greedy_fill(ax: torch.Tensor, y: torch.Tensor, pulses: int) -> torch.Tensor:
    """Add pulses to non-negative ``y`` until each row sums to K (greedy on cos).

    The starting correlations ``<|x|, y>`` and energies ``<y, y>`` are summed here, row by row, for
    both paths: a kernel of :data:`FILL_KERNELS` for the tensors' device, else
    :func:`_greedy_fill_loop`; each gives the row-by-row greedy (:func:`_greedy_fill_reference`)
    bit for bit.
    """
    left = pulses - y.sum(1)
    if len(y) == 0:
        return y
    yd = y.double()
    xy = (ax * yd).sum(1)
    yy = (yd * yd).sum(1)
    kernel = FILL_KERNELS.get(ax.device.type)
    if kernel is not None:
        try:
            return kernel(ax.contiguous(), y.contiguous(), xy, yy, left)
        except Exception as err:  # noqa: BLE001  (a kernel that cannot build here: the loop is exact too)
            FILL_KERNELS.pop(ax.device.type, None)
            warnings.warn(f"the {ax.device.type} greedy-fill kernel failed ({type(err).__name__}: {err}); "
                          "using the PyTorch loop", RuntimeWarning, stacklevel=2)
    return _greedy_fill_loop(ax, yd, xy, yy, left)


def _greedy_fill_loop(ax: torch.Tensor, yd: torch.Tensor, xy: torch.Tensor, yy: torch.Tensor,
                      left: torch.Tensor) -> torch.Tensor:
    """The greedy fill in PyTorch operators, rows taken in order of pulses left (most first), so each
    step works on the prefix of rows that still need a pulse; every row's arithmetic is its own."""
    n = len(yd)
    steps = int(left.max())
    if steps <= 0:
        return yd.long()
    order = torch.argsort(left, descending=True, stable=True)
    a = ax[order]
    yd = yd[order]
    xy = xy[order].unsqueeze(1)
    yy = yy[order].unsqueeze(1)
    active = (left.unsqueeze(0) > torch.arange(steps, device=yd.device).unsqueeze(1)).sum(1).tolist()
    one = torch.ones(n, 1, dtype=yd.dtype, device=yd.device)
    for m in active:
        am, ym = a[:m], yd[:m]
        score = (xy[:m] + am).square_().div_(yy[:m] + 2 * ym + 1)
        best = score.argmax(1, keepdim=True)
        xy[:m] += am.gather(1, best)
        yy[:m] += 2 * ym.gather(1, best) + 1
        ym.scatter_add_(1, best, one[:m])
    out = torch.empty(n, yd.shape[1], dtype=torch.int64, device=yd.device)
    out[order] = yd.long()
    return out


def _greedy_fill_reference(ax: torch.Tensor, y: torch.Tensor, pulses: int) -> torch.Tensor:
    """Plain greedy fill: every row every step (rows done add nothing)."""
    left = pulses - y.sum(1)
    xy = (ax * y).sum(1, keepdim=True)
    yy = (y * y).sum(1, keepdim=True).double()
    yd = y.double()
    for _ in range(int(left.max()) if len(y) else 0):
        inc = (left > 0).double().unsqueeze(1)
        score = (xy + ax).square_().div_(yy + 2 * yd + 1)
        best = score.argmax(1, keepdim=True)
        xy += ax.gather(1, best) * inc
        yy += (2 * yd.gather(1, best) + 1) * inc
        yd.scatter_add_(1, best, inc)
        left = left - inc.squeeze(1).long()
    return yd.long()


def pyramid_search_refine(x: torch.Tensor, pulses: int, max_moves: int = 64) -> torch.Tensor:
    """Greedy projection, then pulse moves that raise cos(x, y) until none does.

    One move takes a pulse from coordinate i (|y_i| >= 1) and gives it to
    coordinate j; each step applies the best move of every row (vectorized over
    rows, O(D^2) candidates). The result is never worse than the greedy one,
    and is a local optimum under single-pulse moves.
    """
    n, dim = x.shape
    rows_per_chunk = max(1, (1 << 22) // (dim * dim))
    if n > rows_per_chunk:
        return torch.cat(
            [pyramid_search_refine(x[s : s + rows_per_chunk], pulses, max_moves) for s in range(0, n, rows_per_chunk)]
        )
    y = pyramid_search_greedy(x, pulses).abs()
    ax = x.abs().double()
    if pulses == 0 or n == 0:
        return torch.where(x < 0, -y, y)
    rows = torch.arange(n, device=y.device)
    xy = (ax * y).sum(1)
    yy = (y * y).sum(1).double()
    best_cos = xy / yy.sqrt()
    for _ in range(max_moves):
        yd = y.double()
        # move a pulse from i to j (i != j): xy' = xy - a_i + a_j ; yy' = yy - 2y_i + 1 + 2y_j + 1
        xy_new = xy[:, None, None] - ax[:, :, None] + ax[:, None, :]
        yy_new = yy[:, None, None] - 2 * yd[:, :, None] + 2 * yd[:, None, :] + 2
        cos = xy_new / yy_new.clamp(min=1).sqrt()
        valid = (y > 0)[:, :, None] & ~torch.eye(dim, dtype=torch.bool, device=y.device)[None]
        cos = torch.where(valid, cos, -1.0)
        flat = cos.reshape(n, -1)
        cand, arg = flat.max(1)
        improve = cand > best_cos * (1 + 1e-12)
        if not bool(improve.any()):
            break
        src, dst = arg // dim, arg % dim
        step = improve.to(torch.int64)
        xy = xy - (ax[rows, src] - ax[rows, dst]) * step
        yy = yy + (-2 * y[rows, src] + 2 * y[rows, dst] + 2).double() * step
        y[rows, src] -= step
        y[rows, dst] += step
        best_cos = torch.where(improve, cand, best_cos)
    return torch.where(x < 0, -y, y)


SEARCHES = {"greedy": pyramid_search_greedy, "refine": pyramid_search_refine}
