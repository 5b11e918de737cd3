"""Per-layer bit widths under a flash budget: sensitivity, sizes, the knapsack, checked on the real file.

Every weight layer (first, last and depthwise included) chooses 2, 4 or 8 bits (at most
``--bits``). What the budget counts is a format (``--budget-for``):

- ``tflite``: the ``.tflite`` file. A choice's bytes come from the storage format (INT8;
  packed INT4; 2-bit LUT indices, one 4-value table shared by the channels and a DECODE
  tensor), each buffer padded to 16 bytes; the rest of the file (graph, activation
  parameters, biases, names) is measured on a real conversion.
- ``aot``: the constants of the ahead-of-time C engine (``export --target aot``,
  :mod:`tinyq.aot.codegen`): weights at their bits (2-bit four to a byte with four levels,
  INT4 two to a byte, int8), unpadded; the rest (biases, per-channel requantization, levels
  per channel where channels do not share them) is measured on the generated engine. The knapsack is solved exactly (:func:`tinyq.mixed.knapsack.solve_exact`)
for the loss increases of :mod:`tinyq.mixed.sensitivity`; then the planned model's real file is
measured (``measure``: :func:`tinyq.pipeline.budget.file_bytes` converts and compacts it). If the estimate was short, the budget left for the
weights is tightened by the difference and the knapsack solved again, so a returned plan's
file is within the budget; then the room is bisected between that plan and the last one that
overshot, so the plan uses what the budget allows.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tinyq.errors import TinyqError, expected_one_of
from tinyq.mixed.knapsack import Choice, solve_exact, solve_greedy, total
from tinyq.spec import QuantSpec

CHOICES = (2, 4, 8)
ALIGN = 16  # TFLite aligns buffers to 16 bytes
# per 2-bit layer beyond its indices, in the compacted file: the DECODE op's output tensor with its
# per-channel scales (the _align(4 * channels + 16) term), the op, its shared value table and
# header; a start for the estimate only, the real file decides (tinyq.convert.lut falls back to a
# table per channel, 4 more bytes each, where TFLM's outputs would change)
LUT_BYTES_PER_LAYER = 176
ATTEMPTS = 6
MAX_BUDGET = 1 << 30  # bytes: past any microcontroller's flash
REFINES = 3  # bisection steps towards the budget once a plan fits
REFINE_GAP = 4 * ALIGN  # bytes of weight room: the knapsack counts in ALIGN units


def require_choice(max_bits: int) -> None:
    """Fail unless ``--bits`` leaves a layer two widths to choose between (4 or more)."""
    if max_bits < 4:
        # one width to choose: every layer, first, depthwise and last included, at 2 bits, whatever the
        # budget: worse than --bits 2 alone, which keeps those layers at 8 (docs/benchmarks.md)
        raise TinyqError(f"--size-budget with --bits {max_bits} leaves every layer one width (2 bits): --bits is the "
                         "most a layer may keep; pass --bits 8 (the budget chooses 2, 4 or 8 per layer) or 4, "
                         "or drop --size-budget")


def parse_size(text: str) -> int:
    """``"64KB"`` -> 65536 bytes (K = 1024, as flash sizes are quoted), ``"200000"`` -> 200000."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(k|kb|kib|m|mb|mib|b)?\s*", text.lower())
    if not m:
        raise TinyqError(f"--size-budget takes a size like 64KB, 1.5MB or 200000 (bytes); got {text!r}")
    unit = {None: 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20}
    size = float(m.group(1)) * unit[m.group(2)]
    if not size <= MAX_BUDGET:  # also inf, from hundreds of digits
        raise TinyqError(f"--size-budget {text.strip()[:40]!r} is larger than any microcontroller's flash; "
                         f"give at most {MAX_BUDGET >> 20} MB")
    return int(size)


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _tflite_weight_bytes(params: int, channels: int, bits: int) -> int:
    if bits == 2:
        return (_align(-(-params // 4)) + _align(4 * channels + 16)
                + LUT_BYTES_PER_LAYER)
    if bits <= 4:
        return _align(-(-params // 2))
    return _align(params)


def _aot_weight_bytes(params: int, channels: int, bits: int) -> int:
    return -(-params // 4) + 4 if bits == 2 else -(-params // 2) if bits <= 4 else params


def _aot_constants(data: bytes) -> int:
    from tinyq.aot.codegen import generate
    from tinyq.aot.lower import lower

    return generate(lower(data)).constant_bytes


@dataclass(frozen=True)
class BudgetFormat:
    """What ``--size-budget`` counts (``--budget-for``; the module docstring)."""

    label: str  # what its bytes are called
    rest: str  # what the weights' estimate leaves out
    weight_bytes: Callable[[int, int, int], int]  # (params, channels, bits) -> estimated bytes
    measure: Callable[[bytes], int]  # a converted file -> its bytes in this format


BUDGET_FORMATS: dict[str, BudgetFormat] = {
    "tflite": BudgetFormat("file", "the rest of the file", _tflite_weight_bytes, len),
    # what export --target aot puts in flash besides the kernels' code
    "aot": BudgetFormat("AOT constants", "biases and requantization", _aot_weight_bytes, _aot_constants),
}


def require_format(fmt: str) -> str:
    if fmt not in BUDGET_FORMATS:
        raise expected_one_of("--budget-for", BUDGET_FORMATS, fmt)
    return fmt


def layer_bytes(params: int, channels: int, bits: int, fmt: str = "tflite") -> int:
    """Estimated bytes of one weight tensor at ``bits`` in format ``fmt`` (see the module docstring)."""
    return BUDGET_FORMATS[fmt].weight_bytes(params, channels, bits)


@dataclass
class BudgetPlan:
    """The chosen widths and what they were chosen from (written to ``RUN/plan.json``)."""

    budget: int
    layers: list[dict]  # name, params, channels, curvature, loss_increase {bits: dL}, bytes {bits: est.}, bits
    file_bytes: int = 0  # measured on the converted planned model, in the budget's format
    budget_for: str = "tflite"  # the format the budget counts (BUDGET_FORMATS)
    other_bytes: int = 0  # the file minus the estimated weight bytes
    greedy_loss: float = 0.0
    exact_loss: float = 0.0
    attempts: list[dict] = field(default_factory=list)

    def specs(self, method: str, act_bits: int) -> dict[str, QuantSpec]:
        return {r["name"]: QuantSpec(method=method, weight_bits=r["bits"], act_bits=act_bits) for r in self.layers}

    def to_dict(self) -> dict:
        return {"budget": self.budget, "budget_for": self.budget_for, "file_bytes": self.file_bytes,
                "other_bytes": self.other_bytes,
                "exact_loss": self.exact_loss, "greedy_loss": self.greedy_loss, "attempts": self.attempts,
                "layers": self.layers}

    def table(self) -> str:
        lines = [f"{'layer':<26}{'bits':>5}{'params':>9}{'bytes':>9}{'curvature':>12}  "
                 + "  ".join(f"dL({b})".rjust(9) for b in CHOICES)]
        for r in self.layers:
            lines.append(f"{r['name'][:25]:<26}{r['bits']:>5}{r['params']:>9,}{r['bytes'][r['bits']]:>9,}"
                         f"{r['curvature']:>12.3g}  "
                         + "  ".join(f"{r['loss_increase'].get(b, float('nan')):>9.3g}" for b in CHOICES))
        lines.append(f"{BUDGET_FORMATS[self.budget_for].label}: {self.file_bytes:,} bytes measured (budget {self.budget:,}); "
                     f"expected loss increase "
                     f"{self.exact_loss:.4g} (exact knapsack; greedy: {self.greedy_loss:.4g})")
        return "\n".join(lines)


def smallest_weights(float_model, max_bits: int = 8, fmt: str = "tflite") -> int:
    """A lower bound of any plan's bytes in ``fmt``: every weight layer of the folded model at its cheapest width."""
    from tinyq.fold import fold_batchnorm
    from tinyq.graph import channel_axis, kernel_attr, weight_layers

    total = 0
    for layer in weight_layers(fold_batchnorm(float_model)):
        shape = getattr(layer, kernel_attr(layer)).shape
        axis = channel_axis(layer)
        channels = 1 if axis is None else int(shape[axis])
        params = int(np.prod(shape))
        total += min(layer_bytes(params, channels, b, fmt) for b in CHOICES if b <= max_bits)
    return total


def require_room(float_model, budget: int, max_bits: int, fmt: str = "tflite") -> None:
    """Fail at once on a budget below :func:`smallest_weights` (before minutes of sensitivity and conversions)."""
    least = smallest_weights(float_model, max_bits, fmt)
    if budget < least:
        raise TinyqError(f"--size-budget {budget:,} bytes is below this model's weights at their smallest "
                         f"({least:,} bytes before {BUDGET_FORMATS[fmt].rest}): raise the budget")


def plan_for_budget(float_model, x: np.ndarray, budget: int, measure: Callable[[dict[str, int]], int], *,
                    max_bits: int = 8, estimator: str = "hutchinson", fmt: str = "tflite",
                    log=lambda m: None) -> BudgetPlan:
    """Widths per weight layer of ``float_model`` within ``budget`` bytes of format ``fmt``.

    ``x``: model-ready images for the sensitivity; ``measure({layer: bits})``: the real bytes
    (in ``fmt``) of the model quantized with those widths.
    """
    from tinyq.mixed.sensitivity import loss_increase

    require_choice(max_bits)
    bits = tuple(b for b in CHOICES if b <= max_bits)
    log(f"plan: sensitivity ({estimator}) on {len(x)} images")
    table = loss_increase(float_model, x, bits, estimator)
    rows = [{"name": name, "params": t["params"], "channels": t["channels"], "curvature": t["curvature"],
             "loss_increase": t["loss_increase"],
             "bytes": {b: layer_bytes(t["params"], t["channels"], b, fmt) for b in bits}} for name, t in table.items()]
    choices = [[Choice(b, r["bytes"][b], r["loss_increase"][b]) for b in bits] for r in rows]
    widest = {r["name"]: bits[-1] for r in rows}
    cheapest = {r["name"]: min(bits, key=lambda b: (r["bytes"][b], -b)) for r in rows}
    measured = measure(widest)
    smallest = measure(cheapest)
    log(f"plan: every layer at its widest: {measured:,} bytes; at its smallest: {smallest:,} bytes")
    # the rest of the file (graph, biases, activation parameters): from whichever end is leaner,
    # since compaction drops more from files only TFLM runs (2-bit LUT) than from int8 ones
    other = min(measured - sum(r["bytes"][widest[r["name"]]] for r in rows),
                smallest - sum(r["bytes"][cheapest[r["name"]]] for r in rows))
    attempts: list[dict] = []

    def attempt(room: int):
        """(picks, widths, measured file bytes) of the knapsack with ``room`` bytes for weights; None if none fits."""
        picks = solve_exact(choices, room)
        if picks is None:
            return None
        widths = {r["name"]: choices[i][p].bits for i, (r, p) in enumerate(zip(rows, picks))}
        size = measured if widths == widest else smallest if widths == cheapest else measure(widths)
        attempts.append({"weight_room": room, "file_bytes": size})
        log(f"plan: {room:,} bytes for weights -> {BUDGET_FORMATS[fmt].label} {size:,} bytes")
        return picks, widths, size

    slack, fit, over = 0, None, None  # fit: (room, attempt) within budget; over: least room that overshot
    cheapest_room = sum(r["bytes"][cheapest[r["name"]]] for r in rows)
    cheapest_picks = [bits.index(cheapest[r["name"]]) for r in rows]
    for _ in range(ATTEMPTS):
        room = budget - other - slack
        tried = attempt(room)
        if tried is None:
            # the slack outgrew the estimate (files without a 2-bit layer keep a zero point per
            # channel, so mid mixes can measure far above it): the smallest file, measured, is the fit
            # if it is within the budget, and the bisection below searches up from it
            if smallest <= budget:
                fit = (cheapest_room, (cheapest_picks, dict(cheapest), smallest))
            break
        if tried[2] <= budget:
            fit = (room, tried)
            break
        over = room
        # the estimate's error is not linear in the room (a layer moving to 2 bits brings its value
        # tables): when taking back the overshoot is not enough, the slack at least doubles
        slack = max(slack + tried[2] - budget + ALIGN, 2 * slack)
    # the doubling can overshoot the other way (a 64 KB plan measured 45.7 KB): bisect the room
    # between the fitting and the overshooting attempt, so the bits the budget allows are spent
    for _ in range(REFINES):
        if fit is None or over is None or over - fit[0] <= REFINE_GAP:
            break
        room = (fit[0] + over) // 2
        tried = attempt(room)
        if tried is not None and tried[2] <= budget:
            fit = (room, tried)
        else:
            over = room
    if fit is not None:
        room, (picks, widths, size) = fit
        for r in rows:
            r["bits"] = widths[r["name"]]
        greedy = solve_greedy(choices, room)
        return BudgetPlan(budget=budget, layers=rows, file_bytes=size, other_bytes=other, attempts=attempts,
                          budget_for=fmt,
                          exact_loss=total(choices, picks)[1],
                          greedy_loss=total(choices, greedy)[1] if greedy is not None else float("nan"))
    least = min([measured, smallest] + [a["file_bytes"] for a in attempts])
    raise TinyqError(f"--size-budget {budget:,} bytes: no plan fits (the smallest {BUDGET_FORMATS[fmt].label} measured: "
                     f"{least:,} bytes, every layer at its smallest: about {smallest:,}): raise the budget")
