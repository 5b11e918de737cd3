"""The mixed-precision knapsack against brute force on small random instances."""
import itertools

import numpy as np
import pytest

from tinyq.mixed.knapsack import Choice, solve_exact, solve_greedy, total


def _instance(seed: int, layers: int = 5):
    """Random layers with choices 2/4/8 bits: more bits, more bytes, less loss (as quantization gives)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(layers):
        n = int(rng.integers(8, 400))
        sens = float(rng.lognormal(0, 2))
        out.append([Choice(b, -(-n * b // 8) + (4 * int(rng.integers(1, 9)) if b == 2 else 0),
                           sens * 4.0 ** -b * float(rng.uniform(0.5, 2))) for b in (2, 4, 8)])
    return out


def _brute(layers, budget):
    best = None
    for picks in itertools.product(*(range(len(layer)) for layer in layers)):
        size, loss = total(layers, picks)
        if size <= budget and (best is None or loss < best[1] - 1e-12):
            best = (list(picks), loss)
    return best


@pytest.mark.parametrize("seed", range(30))
def test_exact_matches_brute_force_and_greedy_is_feasible(seed):
    layers = _instance(seed)
    lo = sum(min(c.bytes for c in layer) for layer in layers)
    hi = sum(max(c.bytes for c in layer) for layer in layers)
    for budget in np.linspace(lo, hi, 5).astype(int):
        brute = _brute(layers, budget)
        exact = solve_exact(layers, budget, granularity=1)
        size, loss = total(layers, exact)
        assert size <= budget and loss == pytest.approx(brute[1], rel=1e-9, abs=1e-15)
        greedy = solve_greedy(layers, budget)
        g_size, g_loss = total(layers, greedy)
        assert g_size <= budget and g_loss >= brute[1] - 1e-12
        coarse = solve_exact(layers, budget, granularity=16)  # rounded-up costs: still within the budget
        rounded_lo = sum(min(-(-c.bytes // 16) for c in layer) for layer in layers) * 16
        assert (coarse is None) == (rounded_lo > budget // 16 * 16)
        assert coarse is None or total(layers, coarse)[0] <= budget


def test_infeasible_and_trivial_budgets():
    layers = _instance(1)
    lo = sum(min(c.bytes for c in layer) for layer in layers)
    assert solve_exact(layers, lo - 1, granularity=1) is None and solve_greedy(layers, lo - 1) is None
    everything = sum(max(c.bytes for c in layer) for layer in layers)
    assert solve_exact(layers, everything, granularity=1) == [2] * 5  # the most bits, least loss
    assert solve_greedy(layers, everything) == [2] * 5
    assert solve_exact([], 0) == [] and solve_greedy([], 0) == []


def test_golden_small_instance():
    # two layers; 100 bytes: both cannot have 8 bits, the sensitive one (a) gets them
    a = [Choice(2, 10, 9.0), Choice(4, 20, 3.0), Choice(8, 40, 0.0)]
    b = [Choice(2, 25, 1.0), Choice(4, 50, 0.5), Choice(8, 100, 0.0)]
    assert solve_exact([a, b], 100, granularity=1) == [2, 1]
    assert solve_greedy([a, b], 100) == [2, 1]
    assert solve_exact([a, b], 65, granularity=1) == [2, 0]  # 40 + 25 bytes
    assert solve_exact([a, b], 64, granularity=1) == [1, 0]  # one byte less: a drops to 4 bits
