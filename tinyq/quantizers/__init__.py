"""Weight and activation quantizers: one module per family, one registry by name.

``registry`` and ``grid`` need no TensorFlow; the quantizer classes (``WeightQuantizer``,
``mse_scale`` and the method modules) import it on first use.
"""
from tinyq.quantizers import registry
from tinyq.quantizers.grid import Grid, grid

__all__ = ["registry", "WeightQuantizer", "mse_scale", "Grid", "grid"]


def __getattr__(name: str):
    if name in ("WeightQuantizer", "mse_scale"):
        from tinyq.quantizers import base

        return getattr(base, name)
    raise AttributeError(f"module 'tinyq.quantizers' has no attribute {name!r}")
