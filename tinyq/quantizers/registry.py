"""The registry of quantization methods, keyed by name, and how names combine with ``+``.

The CLI's ``--method`` choices, ``tinyq methods`` and the tests' parametrisation all read
:data:`METHODS`, so a new method is one entry here and one module. A ``--method`` is one
method or a ``+``-joined combination the papers use: at most one weight quantizer (``ste``
when none is named), optionally ``qgt`` (a regulariser on top of it), at most one activation
quantizer (``sat+cgpact``, ``qgt+daq``, ``qgt+pact``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from tinyq.errors import TinyqError, expected_one_of


@dataclass(frozen=True)
class Method:
    """One method: its kind, paper and what it quantizes, and its quantizer class (``impl``: the class,
    or ``"module:Class"``, imported on first use so that listing methods needs no TensorFlow)."""

    name: str
    kind: str  # "weights" | "regulariser" | "activations"
    paper: str
    quantizes: str
    impl: type | str | None = None

    @property
    def quantizer(self) -> type | None:
        if isinstance(self.impl, str):
            module, cls = self.impl.split(":")
            return getattr(importlib.import_module(module), cls)
        return self.impl


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("ste", "weights", "straight-through estimator (Bengio et al. 2013) with LSQ scales "
               "(Esser et al. 2020)", "weights: per-channel uniform grid, learned scale",
               "tinyq.quantizers.uniform:UniformSTE"),
        Method("daq", "weights", "Distance-Aware Quantizer (Kim et al. 2021, arXiv 2108.06983)",
               "weights: distance-aware soft rounding over the nearest levels, temperature set per weight",
               "tinyq.quantizers.daq:DAQ"),
        Method("sat", "weights", "SAT (Jin, Yang, Liao 2019, arXiv 1912.10207)",
               "weights: DoReFa tanh clamp per channel, uniform rounding, scale-adjusted (learned, BN-folded)",
               "tinyq.quantizers.sat:SAT"),
        Method("cpq", "weights", "Cluster-Promoting Quantization with DropBits (Lee et al. 2021, arXiv 2109.02100)",
               "weights: levels sampled from a distance-based categorical, multi-class STE, DropBits",
               "tinyq.quantizers.cpq:CPQ"),
        Method("levels", "weights", "learned quantizer levels (LQ-Nets, Zhang et al. 2018, arXiv 1807.10029), "
               "free in TFLM's LUT value tables",
               "weights: 2-bit levels -1.5, -r, r, 1.5 per channel scale, r learned per layer (other widths: ste)",
               "tinyq.quantizers.levels:LearnedLevels"),
        Method("qgt", "regulariser", "Quantization Guided Training (Ghamari et al. 2021, arXiv 2103.06231)",
               "weights: pulls each weight to its grid level (a loss term, ramped); combines with any "
               "weight method"),
        Method("pact", "activations", "PACT (Choi et al. 2018, arXiv 1805.06085)",
               "activations: ReLU outputs clipped to a learned alpha per layer, --act-bits levels",
               "tinyq.quantizers.pact:PACTQuantizer"),
        Method("cgpact", "activations", "CG-PACT (Jin, Yang, Liao 2019, arXiv 1912.10207)",
               "activations: as pact, with the clip gradient the estimator drops",
               "tinyq.quantizers.pact:PACTQuantizer"),
    ]
}


@dataclass(frozen=True)
class Combination:
    """A parsed ``--method``: the weight quantizer, whether QGT regularises it, the activation method."""

    weights: Method
    qgt: bool = False
    activations: Method | None = None

    def weight_quantizer(self, bits: int, channel_axis: int | None, **options):
        """The weight quantizer; ``options`` go to methods that take them (CPQ's ``learn_bits``)."""
        from tinyq.quantizers.qgt import QGT_LAMBDA

        return self.weights.quantizer(bits=bits, channel_axis=channel_axis, qgt=QGT_LAMBDA if self.qgt else 0.0,
                                      **options)

    def activation_quantizer(self, bits: int):
        """The output quantizer of the activation method, or None (TFMOT's 8-bit moving average)."""
        if self.activations is None:
            return None
        return self.activations.quantizer(bits=bits, clip_gradient=self.activations.name == "cgpact")


def register(method: Method) -> None:
    """Add ``method`` to :data:`METHODS` (a method of your own, or a variant to measure); its name must be new."""
    if method.name in METHODS or "+" in method.name:
        raise TinyqError(f"cannot register method {method.name!r}: the name is taken or holds '+'")
    METHODS[method.name] = method


def get(name: str) -> Method:
    """The method called ``name``; an unknown name fails with the choices."""
    try:
        return METHODS[name]
    except KeyError:
        raise expected_one_of("method", sorted(METHODS), name) from None


def parse(text: str) -> Combination:
    """``"qgt+daq"`` -> Combination; nonsensical combinations fail with the reason."""
    parts = [get(p.strip().lower()) for p in text.split("+")]
    by_kind: dict[str, list[Method]] = {}
    for m in parts:
        by_kind.setdefault(m.kind, []).append(m)
    for kind, ms in by_kind.items():
        if len(ms) > 1:
            raise TinyqError(f"--method {text!r} names {len(ms)} {kind} methods ({', '.join(m.name for m in ms)}); "
                             f"combine at most one of each kind: weights ({', '.join(_names('weights'))}), "
                             f"qgt, activations ({', '.join(_names('activations')) or 'none'})")
    acts = by_kind.get("activations", [None])[0]
    return Combination(weights=by_kind.get("weights", [METHODS["ste"]])[0], qgt="regulariser" in by_kind,
                       activations=acts)


def _names(kind: str) -> list[str]:
    return sorted(n for n, m in METHODS.items() if m.kind == kind)


def names() -> list[str]:
    return sorted(METHODS)


def custom_objects() -> dict:
    """Classes Keras needs to reload a model that uses tinyq quantizers."""
    return {m.quantizer.__name__: m.quantizer for m in METHODS.values() if m.quantizer is not None}


def describe(text: str) -> str:
    """How ``--method`` quantizes, for logs: ``"ste weights + qgt regulariser + cgpact activations"``."""
    c = parse(text)
    return " + ".join([f"{c.weights.name} weights", *(["qgt regulariser"] if c.qgt else []),
                       *([f"{c.activations.name} activations"] if c.activations else [])])
