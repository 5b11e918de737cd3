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
    from tinyq.qat import WEIGHT_LAYERS, L

    weight_layers = [layer for layer in model.layers if isinstance(layer, WEIGHT_LAYERS)]
    if not weight_layers:
        raise TinyqError("the model has no Conv2D, DepthwiseConv2D or Dense layer to quantize")
    plan = {}
    for i, layer in enumerate(weight_layers):
        keep = (("first" in keep_8bit and i == 0) or ("last" in keep_8bit and i == len(weight_layers) - 1)
                or ("depthwise" in keep_8bit and isinstance(layer, L.DepthwiseConv2D)))
        plan[layer.name] = QuantSpec(method=method, weight_bits=8 if keep else bits, act_bits=8 if keep else act_bits)
    return plan


def describe_plan(bits: int, act_bits: int, method: str, keep_8bit, learn_bits: bool = False) -> str:
    """One line for logs: ``"weights 2-bit, activations 4-bit (ste weights + cgpact activations); ..."``."""
    from tinyq.quantizers import registry

    weights = f"weights at the learned widths (up to {bits}-bit)" if learn_bits else f"weights {bits}-bit"
    return (f"{weights}, activations {act_bits}-bit in int8 ({registry.describe(method)}); "
            f"{', '.join(keep_8bit) or 'no layers'} kept 8-bit")
