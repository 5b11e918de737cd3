"""Per-layer plans: which weight layers take ``--bits`` and which stay 8-bit."""
from __future__ import annotations

from tinyq.errors import TinyqError
from tinyq.spec import QuantSpec

KEEP_CHOICES = ("first", "last", "depthwise")


def parse_keep(text: str) -> tuple[str, ...]:
    """``"first,last,depthwise"`` / ``"none"`` -> a tuple of KEEP_CHOICES."""
    if text.strip().lower() in ("", "none"):
        return ()
    parts = tuple(p.strip().lower() for p in text.split(","))
    bad = [p for p in parts if p not in KEEP_CHOICES]
    if bad:
        raise TinyqError(f"unknown --keep-8bit entry: expected one of {', '.join(KEEP_CHOICES)}, none; got {bad[0]!r}")
    return parts


def default_plan(model, bits: int, method: str = "ste", keep_8bit=KEEP_CHOICES, act_bits: int = 8
                 ) -> dict[str, QuantSpec]:
    """``bits`` for every weight layer but those ``keep_8bit`` names (first, last, depthwise).

    ``act_bits`` applies to the activations after the layers that take ``bits`` (kept layers
    keep 8-bit activations too).

    Why keep them: the first conv sees raw pixels and the last layer sets the logits, and a
    3x3 depthwise filter has 9 weights per channel, too few to survive 2 bits; together they
    hold about 14% of MobileNetV1-0.25's weights.
    """
    from tinyq.graph import L, weight_layers  # here: the options that name plans are read before TensorFlow

    layers = weight_layers(model)
    if not layers:
        raise TinyqError("the model has no Conv2D, DepthwiseConv2D or Dense layer to quantize")
    plan = {}
    for i, layer in enumerate(layers):
        keep = (("first" in keep_8bit and i == 0) or ("last" in keep_8bit and i == len(layers) - 1)
                or ("depthwise" in keep_8bit and isinstance(layer, L.DepthwiseConv2D)))
        plan[layer.name] = QuantSpec(method=method, weight_bits=8 if keep else bits, act_bits=8 if keep else act_bits)
    return plan


def describe_plan(bits: int, act_bits: int, method: str, keep_8bit, chosen_by: str | None = None) -> str:
    """One line for logs: ``"weights 2-bit, activations 4-bit (ste weights + cgpact activations); ..."``.

    ``chosen_by``: what set per-layer widths instead of ``bits`` ("learned", "the size budget", a plan file).
    """
    from tinyq.quantizers import registry

    if chosen_by:
        return (f"weights at per-layer widths ({chosen_by}, at most {bits}-bit), activations {act_bits}-bit in int8 "
                f"({registry.describe(method)})")
    return (f"weights {bits}-bit, activations {act_bits}-bit in int8 ({registry.describe(method)}); "
            f"{', '.join(keep_8bit) or 'no layers'} kept 8-bit")


def chooser(learn_bits: bool, size_budget: int | None, plan_file: str | None) -> str | None:
    """What chose the per-layer widths, for :func:`describe_plan`."""
    if plan_file:
        return f"from {plan_file}"
    if size_budget:
        return f"knapsack within {size_budget:,} bytes"
    return "learned" if learn_bits else None


def plan_from_file(path, model, method: str, act_bits: int) -> dict[str, QuantSpec]:
    """Widths from a plan file (``tinyq plan --out``, or a run's ``plan.json``) for ``model``'s weight layers."""
    import json
    from pathlib import Path

    try:
        layers = {r["name"]: int(r["bits"]) for r in json.loads(Path(path).read_text())["layers"]}
    except FileNotFoundError:
        raise TinyqError(f"plan file {str(path)!r} does not exist; make one with tinyq plan ... --out FILE") from None
    except IsADirectoryError:
        raise TinyqError(f"--plan {str(path)!r} is a folder; give the plan file (tinyq plan ... --out FILE, or a "
                         "run's plan.json)") from None
    except (ValueError, KeyError, TypeError, OSError, RecursionError):
        raise TinyqError(f"{str(path)!r} is not a tinyq plan (JSON with layers: [{{name, bits}}]); "
                         "make one with tinyq plan") from None
    from tinyq.graph import weight_layers

    names = [layer.name for layer in weight_layers(model)]
    if set(names) != set(layers):
        missing, extra = sorted(set(names) - set(layers)), sorted(set(layers) - set(names))
        raise TinyqError(f"plan {str(path)!r} does not fit this model (missing {missing or 'none'}, "
                         f"unknown {extra or 'none'}): make the plan for this model")
    return {n: QuantSpec(method=method, weight_bits=layers[n], act_bits=act_bits) for n in names}
