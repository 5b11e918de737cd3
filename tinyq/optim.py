"""Adam whose steps on quantizer scales are relative to the scale.

Adam moves every variable by about its learning rate per step, whatever the variable's size
(the update ``lr * m / sqrt(v)`` is normalised by the gradient's own magnitude, so LSQ's
gradient scaling does not reach it). A per-channel step size is a variable of very uneven
size: a 2-bit pointwise scale is ~1e-1, an 8-bit depthwise one ~1e-3 to 1e-2. At QAT's learning
rates the latter moves by a large part of itself per step and can random-walk to nothing, and
the channel's output with it (measured in docs/benchmarks.md).

Here each step-size variable ``s`` takes Adam's update multiplied by ``gain * |s|``:
``s <- s - gain * |s| * lr * m / sqrt(v)``, so every scale moves by about ``gain * lr`` of
itself per step, as ``log |s|`` would
under plain Adam, while the variable keeps holding the scale the converter reads. Other
variables get plain Adam.
"""
from __future__ import annotations

from typing import Iterable

from tinyq._tf import keras, tf

GAIN = 10.0  # relative step per unit of learning rate


def step_variables(model: keras.Model) -> list[tf.Variable]:
    """Every tinyq weight quantizer's step-size variables in ``model`` (QAT wrappers and :mod:`tinyq.layers`)."""
    from tinyq.quantizers.base import WeightQuantizer

    found: list[tf.Variable] = []
    for layer in model.submodules:
        pairs = [(q, qvars) for _, q, qvars in getattr(layer, "_weight_vars", [])]
        if hasattr(layer, "quantizer_vars"):
            pairs.append((layer.quantizer, layer.quantizer_vars))
        for quantizer, qvars in pairs:
            if isinstance(quantizer, WeightQuantizer):
                found += quantizer.step_variables(qvars)
    return found


class Adam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with relative steps on ``relative`` (a model's :func:`step_variables`).

    ``Adam(lr, relative=step_variables(model))``; with no ``relative`` it is plain Adam.
    """

    def __init__(self, learning_rate=1e-3, relative: Iterable[tf.Variable] = (), gain: float = GAIN, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.gain = float(gain)
        self._relative = {self._var_key(v) for v in relative}

    def update_step(self, gradient, variable):
        if self._var_key(variable) not in self._relative:
            return super().update_step(gradient, variable)
        before = tf.identity(variable)
        super().update_step(gradient, variable)
        variable.assign(before + (variable - before) * (self.gain * tf.abs(before)))

    def get_config(self) -> dict:
        return {**super().get_config(), "gain": self.gain}
