"""The registry of weight-quantization methods, keyed by name.

The CLI's ``--method`` choices, ``tinyq methods`` and the tests' parametrisation all read
:data:`METHODS`, so a new method is one entry here and one module.
"""
from __future__ import annotations

from dataclasses import dataclass

from tinyq.errors import expected_one_of
from tinyq.quantizers.base import WeightQuantizer
from tinyq.quantizers.uniform import UniformSTE


@dataclass(frozen=True)
class Method:
    name: str
    quantizer: type[WeightQuantizer]
    paper: str
    quantizes: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("ste", UniformSTE, "straight-through estimator (Bengio et al. 2013) with LSQ scales "
               "(Esser et al. 2020)", "weights: per-channel uniform grid, learned scale"),
    ]
}


def get(name: str) -> Method:
    """The method called ``name``; an unknown name fails with the choices."""
    try:
        return METHODS[name]
    except KeyError:
        raise expected_one_of("method", sorted(METHODS), name) from None


def names() -> list[str]:
    return sorted(METHODS)


def custom_objects() -> dict:
    """Classes Keras needs to reload a model that uses tinyq quantizers."""
    return {m.quantizer.__name__: m.quantizer for m in METHODS.values()}
