"""Per-layer rate allocation under a size budget: pure functions over rate-distortion points.

Each layer offers measured points ``(bits, distortion)`` (``bits``: the layer's stored bits at one
candidate setting, an integer; ``distortion``: any additive measure of the harm it does, e.g. the
solver's proxy loss). :func:`allocate` picks one point per layer so that the summed bits stay
within a budget and the summed distortion is as small as the points allow:

1. Lagrangian sweep on each layer's lower convex hull (:func:`lower_hull`): start every layer at
   its cheapest point and take hull steps in order of falling slope ``-dD/dbits`` (the distortion
   saved per bit); a step that does not fit the remaining budget is skipped, the sweep goes on
   with the others. This is the exact optimum of the convex relaxation at every point the
   budget stops it (the classic Shoham-Gersho / EXL2 argument).
2. Fill: while any single move to another measured point of some layer (on the hull or not)
   fits the remaining bits and lowers the distortion, take the one that lowers it most.

The result never exceeds the budget, and no single affordable move improves it (the budget is met
to within one ladder step of one layer). Ties are broken by the layer's index, then by the
point's index, so the result is deterministic.

No torch, no models: the driver (:mod:`pvq.models.allocation`) measures the points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pvq.errors import SolverError

__all__ = ["Allocation", "RatePoint", "allocate", "lower_hull"]


@dataclass(frozen=True)
class RatePoint:
    """One measured setting of one layer: ``bits`` stored (int), ``distortion`` (finite, >= 0)."""

    bits: int
    distortion: float

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits < 0:
            raise SolverError(f"a rate point's bits must be a non-negative integer, got {self.bits!r}")
        if not isinstance(self.distortion, (int, float)) or not math.isfinite(self.distortion) or self.distortion < 0:
            raise SolverError(f"a rate point's distortion must be finite and >= 0, got {self.distortion!r}")


@dataclass(frozen=True)
class Allocation:
    """The choice: ``choice[i]`` indexes layer i's points; totals; the last hull slope taken
    (``lam``: distortion per bit at which the sweep stopped, 0 when every layer reached its top)."""

    choice: tuple[int, ...]
    bits: int
    distortion: float
    lam: float
    budget: int


def lower_hull(points: list[RatePoint]) -> list[int]:
    """Indices of the points on the lower convex hull of ``points`` in the (bits, distortion) plane,
    by rising bits and falling distortion (the efficient frontier): dominated points (not fewer
    bits, not lower distortion) and points above a chord are left out. Of equal points the first wins."""
    order = sorted(range(len(points)), key=lambda i: (points[i].bits, points[i].distortion, i))
    front: list[int] = []
    for i in order:  # Pareto front: strictly falling distortion as bits rise
        if front and points[i].bits == points[front[-1]].bits:
            continue
        if front and points[i].distortion >= points[front[-1]].distortion:
            continue
        front.append(i)
    hull: list[int] = []
    for i in front:  # monotone chain, lower side: slopes must rise (less negative) along the hull
        while len(hull) >= 2 and _cross(points[hull[-2]], points[hull[-1]], points[i]) <= 0:
            hull.pop()
        hull.append(i)
    return hull


def _cross(a: RatePoint, b: RatePoint, c: RatePoint) -> float:
    """> 0 when b lies strictly below the chord a-c (a left turn)."""
    return (b.bits - a.bits) * (c.distortion - a.distortion) - (b.distortion - a.distortion) * (c.bits - a.bits)


def allocate(layers: list[list[RatePoint]], budget: int) -> Allocation:
    """One point per layer, summed bits <= ``budget``, summed distortion minimized (see the module).

    Raises :class:`SolverError` when a layer has no points or when even the cheapest point of every
    layer exceeds the budget (naming the smallest budget that works).
    """
    if not layers or any(not pts for pts in layers):
        raise SolverError("every layer needs at least one measured rate point")
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise SolverError(f"the budget must be an integer number of bits, got {budget!r}")
    hulls = [lower_hull(pts) for pts in layers]
    pos = [0] * len(layers)  # position on each hull
    least = sum(layers[i][h[0]].bits for i, h in enumerate(hulls))
    if least > budget:
        raise SolverError(
            f"the budget of {budget} bits is below the {least} bits of every layer's cheapest candidate; "
            "raise the target rate or lower --min-bits"
        )
    left = budget - least
    steps = []  # (-slope, layer, hull position): every hull step, steepest first
    for i, h in enumerate(hulls):
        for k in range(len(h) - 1):
            a, b = layers[i][h[k]], layers[i][h[k + 1]]
            steps.append(((a.distortion - b.distortion) / (b.bits - a.bits), i, k))
    steps.sort(key=lambda s: (-s[0], s[1], s[2]))
    blocked: set[int] = set()
    lam = 0.0
    for slope, i, k in steps:
        if i in blocked or pos[i] != k:
            continue
        a, b = layers[i][hulls[i][k]], layers[i][hulls[i][k + 1]]
        if b.bits - a.bits <= left:
            left -= b.bits - a.bits
            pos[i] = k + 1
            lam = slope
        else:
            blocked.add(i)  # the layer's later steps are flatter; the fill below may still move it
    choice = [hulls[i][p] for i, p in enumerate(pos)]
    while True:  # fill: the single affordable move that lowers the distortion most
        best = None
        for i, pts in enumerate(layers):
            cur = pts[choice[i]]
            for j, p in enumerate(pts):
                extra = p.bits - cur.bits
                gain = cur.distortion - p.distortion
                if extra <= left and gain > 0 and (best is None or gain > best[0]):
                    best = (gain, i, j, extra)
        if best is None:
            break
        _, i, j, extra = best
        choice[i] = j
        left -= extra
    bits = sum(layers[i][c].bits for i, c in enumerate(choice))
    dist = sum(layers[i][c].distortion for i, c in enumerate(choice))
    return Allocation(tuple(choice), bits, dist, lam, budget)
