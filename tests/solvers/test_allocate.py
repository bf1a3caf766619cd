"""The allocator (pvq/solvers/allocate.py): exact hulls, budgets, bounds and ties against brute force."""

import itertools
import random

import pytest

from pvq.errors import SolverError
from pvq.solvers.allocate import RatePoint, allocate, lower_hull


def P(*pairs):
    return [RatePoint(b, d) for b, d in pairs]


def brute(layers, budget):
    """(least summed distortion, its choices) over every combination within the budget."""
    best = None
    for combo in itertools.product(*[range(len(p)) for p in layers]):
        bits = sum(layers[i][j].bits for i, j in enumerate(combo))
        if bits <= budget:
            d = sum(layers[i][j].distortion for i, j in enumerate(combo))
            if best is None or d < best[0] - 1e-12:
                best = (d, combo)
    return best


def test_lower_hull_drops_dominated_and_non_convex_points():
    pts = P((4, 10.0), (2, 40.0), (6, 6.0), (3, 30.0), (5, 9.5), (8, 1.0), (7, 7.0), (6, 6.0))
    # by bits: 2:40, 3:30, 4:10, 5:9.5, 6:6, 7:7 (dominated), 8:1; 3:30 lies above the chord 2-4,
    # 5:9.5 above the chord 4-6 (8.0), 6:6 above the chord 4-8 (5.5); the second (6, 6.0) is a duplicate
    assert lower_hull(pts) == [1, 0, 5]
    assert lower_hull(P((3, 1.0))) == [0]
    assert lower_hull(P((3, 1.0), (3, 1.0))) == [0]  # of equal points the first
    assert lower_hull(P((3, 1.0), (5, 1.0))) == [0]  # more bits, no gain: dominated
    assert lower_hull(P((1, 4.0), (2, 2.0), (3, 0.0))) == [0, 2]  # collinear middle point left out


def test_convex_equal_steps_is_exactly_optimal_for_every_budget():
    """One bit step for all layers and convex distortions: the sweep is the optimum (brute force) at every budget."""
    rng = random.Random(0)
    for _ in range(40):
        layers = []
        w = rng.randint(1, 5)  # bits per step, the same for every layer
        for _ in range(rng.randint(1, 4)):
            d, slope, pts = rng.uniform(5, 50), rng.uniform(3, 12), []
            for k in range(rng.randint(1, 5)):
                pts.append(RatePoint(w * (2 + k), d))
                d, slope = max(d - slope * w, 0.0), slope * rng.uniform(0.3, 0.95)
            layers.append(pts)
        least = sum(p[0].bits for p in layers)
        for budget in range(least, sum(p[-1].bits for p in layers) + 2):
            a = allocate(layers, budget)
            opt = brute(layers, budget)
            assert a.bits <= budget
            assert a.distortion == pytest.approx(opt[0], rel=1e-12, abs=1e-12), (layers, budget)


def test_any_points_stay_within_budget_and_leave_no_affordable_improvement():
    rng = random.Random(1)
    worse = 0
    for _ in range(150):
        layers = [[RatePoint(rng.randint(1, 30), rng.uniform(0, 100)) for _ in range(rng.randint(1, 5))]
                  for _ in range(rng.randint(1, 4))]
        least = sum(min(p.bits for p in pts) for pts in layers)
        budget = least + rng.randint(0, 40)
        a = allocate(layers, budget)
        assert a.bits == sum(layers[i][c].bits for i, c in enumerate(a.choice)) <= budget
        assert a.distortion == pytest.approx(sum(layers[i][c].distortion for i, c in enumerate(a.choice)))
        for i, pts in enumerate(layers):  # no single move of one layer fits and lowers the sum
            cur = pts[a.choice[i]]
            for p in pts:
                assert not (p.bits - cur.bits <= budget - a.bits and p.distortion < cur.distortion)
        opt = brute(layers, budget)
        assert a.distortion >= opt[0] - 1e-9
        worse += a.distortion > opt[0] + 1e-9
    assert worse < 30  # a knapsack heuristic: optimal on most instances (measured: 150 - worse)


def test_budget_ends():
    layers = [P((2, 9.0), (4, 3.0), (6, 1.0)), P((1, 5.0), (3, 2.0))]
    a = allocate(layers, 3)  # exactly the cheapest points
    assert a.choice == (0, 0) and a.bits == 3 and a.lam == 0.0
    a = allocate(layers, 100)  # every layer at its least distortion
    assert a.choice == (2, 1) and a.bits == 9
    with pytest.raises(SolverError, match="below the 3 bits"):
        allocate(layers, 2)
    with pytest.raises(SolverError, match="at least one"):
        allocate([P((1, 1.0)), []], 10)
    with pytest.raises(SolverError, match="integer"):
        allocate(layers, 3.5)
    for bad in ((-1, 1.0), (1.5, 1.0), (1, float("nan")), (1, -0.1), (True, 1.0)):
        with pytest.raises(SolverError):
            RatePoint(*bad)


def test_lagrangian_order_and_lambda():
    # layer 0 saves 3/bit then 1/bit; layer 1 saves 2/bit: with 4 bits over the cheapest, 0's first step
    # (2 bits, 3/bit) and 1's step (2 bits, 2/bit) are taken, 0's flatter second step is not
    layers = [P((2, 10.0), (4, 4.0), (6, 2.0)), P((2, 8.0), (4, 4.0))]
    a = allocate(layers, 8)
    assert a.choice == (1, 1) and a.bits == 8 and a.distortion == 8.0 and a.lam == 2.0


def test_ties_go_to_the_earlier_layer_and_are_deterministic():
    same = P((2, 10.0), (4, 6.0))
    a = allocate([same, list(same), list(same)], 8)  # room for one step of three equal layers
    assert a.choice == (1, 0, 0)
    b = allocate([same, list(same), list(same)], 10)
    assert b.choice == (1, 1, 0)


def test_skipped_step_leaves_room_for_smaller_layers_and_the_fill():
    # layer 0's steep step needs 10 bits, only 4 are left: it is skipped and layer 1 takes both its steps
    layers = [P((10, 100.0), (20, 0.0)), P((1, 10.0), (3, 4.0), (5, 1.0)), P((1, 3.0), (2, 2.5), (4, 2.0))]
    a = allocate(layers, 12 + 4)
    assert a.choice == (0, 2, 0) and a.bits == 16
    # layer 0's hull step (4 bits) does not fit the 2 bits left; after layer 1's step the fill moves
    # layer 0 to (2, 9.5), a point off its hull: the optimum (brute force)
    layers = [P((1, 10.0), (2, 9.5), (5, 0.0)), P((1, 4.0), (2, 3.0))]
    a = allocate(layers, 4)
    assert a.choice == (1, 1) and a.distortion == brute(layers, 4)[0] == 12.5
    assert lower_hull(layers[0]) == [0, 2]
