"""The multiple-choice knapsack of mixed precision: one bit width per layer, least loss, within a budget.

Chen et al. 2021 (arXiv 2110.06554): choose ``b_l`` per layer minimising ``sum_l dL_l(b_l)``
subject to ``sum_l size_l(b_l) <= budget``. Two solvers over the same :class:`Choice` lists:

- :func:`solve_exact`: dynamic programming over byte costs rounded *up* to ``granularity``
  bytes (so its answer always fits the true budget); ``O(layers * choices * budget /
  granularity)``, well under a second for MobileNet-sized models at 16-byte granularity.
- :func:`solve_greedy`: start every layer at its cheapest choice, then repeatedly take the
  upgrade with the largest loss decrease per extra byte that still fits (the classic LP
  greedy on each layer's convex hull). Fast, near-optimal, never over budget.

Both return the chosen index per layer, or ``None`` when even the cheapest choices do not fit.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Choice:
    """One option for one layer: its bit width, its bytes in the file, its expected loss increase."""

    bits: int
    bytes: int
    loss: float


def total(layers: Sequence[Sequence[Choice]], picks: Sequence[int]) -> tuple[int, float]:
    """``(bytes, loss)`` of choosing ``picks[l]`` in layer ``l``."""
    chosen = [layer[i] for layer, i in zip(layers, picks)]
    return sum(c.bytes for c in chosen), float(sum(c.loss for c in chosen))


def solve_exact(layers: Sequence[Sequence[Choice]], budget: int, granularity: int = 16) -> list[int] | None:
    """The least-loss choice per layer with ``sum bytes <= budget`` (costs rounded up to ``granularity``)."""
    if not layers:
        return []
    cap = budget // granularity
    if cap < 0:
        return None
    inf = math.inf
    best = np.zeros(cap + 1)  # best[c]: least loss of the layers so far within c units
    picks = np.zeros((len(layers), cap + 1), np.int16)
    for li, layer in enumerate(layers):
        new = np.full(cap + 1, inf)
        for ci, choice in enumerate(layer):
            units = -(-choice.bytes // granularity)
            if units > cap:
                continue
            candidate = np.full(cap + 1, inf)
            candidate[units:] = best[:cap + 1 - units] + choice.loss
            better = candidate < new
            new[better] = candidate[better]
            picks[li][better] = ci
        best = new
    if not np.isfinite(best[cap]):
        return None
    out, c = [], cap
    for li in reversed(range(len(layers))):
        ci = int(picks[li][c])
        out.append(ci)
        c -= -(-layers[li][ci].bytes // granularity)
    return out[::-1]


def solve_greedy(layers: Sequence[Sequence[Choice]], budget: int) -> list[int] | None:
    """Cheapest everywhere, then the best loss-per-byte upgrades that fit (see the module docstring)."""
    picks = [min(range(len(layer)), key=lambda i: (layer[i].bytes, layer[i].loss)) for layer in layers]
    used = sum(layer[i].bytes for layer, i in zip(layers, picks))
    if used > budget:
        return None
    while True:
        best, gain = None, 0.0
        for li, layer in enumerate(layers):
            here = layer[picks[li]]
            for ci, c in enumerate(layer):
                extra, saved = c.bytes - here.bytes, here.loss - c.loss
                if saved <= 0 or used + extra > budget:
                    continue
                ratio = saved / extra if extra > 0 else math.inf
                if ratio > gain:
                    best, gain = (li, ci, extra), ratio
        if best is None:
            return picks
        li, ci, extra = best
        picks[li], used = ci, used + extra
