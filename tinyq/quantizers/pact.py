"""``pact`` and ``cgpact``: activations clipped to a learned ``alpha`` and quantized on ``[0, alpha]``.

PACT (Choi et al. 2018, arXiv 1805.06085): ``y = clip(x, 0, alpha)``, quantized uniformly to
``n = 2^b - 1`` steps, ``y_q = alpha * round(y / alpha * n) / n``; the straight-through
estimator gives ``dy_q/dalpha = 1`` for ``x >= alpha`` and 0 below.
CG-PACT (Jin, Yang, Liao 2019, arXiv 1912.10207) keeps the term the estimator drops:
``dy_q/dalpha = Q(x/alpha) - x/alpha`` for ``0 <= x < alpha`` (the LSQ form of the gradient).

Deployment: TFLite stores activations as int8. The layer's forward pass is written as the
ops the converter maps onto TFLite: an 8-bit fake-quant over ``[0, 255 * alpha / n]`` (its
step is the b-bit step, so the conv before it gets that output scale and fuses the ReLU),
``minimum(., alpha)`` (a MINIMUM op: the clip), and the same fake-quant again. The int8
tensors then hold exactly the b-bit levels ``-128 .. -128 + n``. Its gradient is PACT's or
CG-PACT's (``tf.custom_gradient``), so training sees the papers' estimators.
"""
from __future__ import annotations

import numpy as np

from tinyq._tf import tf, tfmot
from tinyq.quantizers.base import ConfigDefined


def pact_quantize(x: tf.Tensor, alpha: tf.Tensor, bits: int, clip_gradient: bool = False) -> tf.Tensor:
    """``alpha * round(clip(x, 0, alpha) / alpha * n) / n``; PACT's or (``clip_gradient``) CG-PACT's alpha gradient."""
    n = float(2 ** bits - 1)
    if clip_gradient:
        u = tf.clip_by_value(x / alpha, 0.0, 1.0)
        return alpha * (u + tf.stop_gradient(tf.round(u * n) / n - u))
    y = tf.minimum(tf.nn.relu(x), alpha)  # d/dalpha: 1 where x >= alpha, else 0
    return y + tf.stop_gradient(alpha * tf.round(y / alpha * n) / n - y)


def clip(alpha: tf.Tensor) -> tf.Tensor:
    """The clip PACT computes with, ``|alpha| + 1e-6`` (the trained variable may change sign)."""
    return tf.abs(alpha) + 1e-6


def deployable_pact(x: tf.Tensor, alpha: tf.Tensor, bits: int, clip_gradient: bool = False) -> tf.Tensor:
    """:func:`pact_quantize`'s values and gradients, computed by the ops TFLite deploys (see module doc)."""
    n = float(2 ** bits - 1)

    @tf.custom_gradient
    def f(x, alpha):
        top = alpha * (255.0 / n)  # the 8-bit range whose step is alpha / n
        y = tf.quantization.fake_quant_with_min_max_vars(x, 0.0, top, num_bits=8)
        if bits < 8:
            y = tf.quantization.fake_quant_with_min_max_vars(tf.minimum(y, alpha), 0.0, top, num_bits=8)

        def grad(dy):
            inside = tf.cast((x >= 0) & (x < alpha), dy.dtype)
            above = tf.cast(x >= alpha, dy.dtype)
            d_alpha = above
            if clip_gradient:
                u = x / alpha
                d_alpha += inside * (tf.round(u * n) / n - u)
            return dy * inside, tf.reduce_sum(dy * d_alpha)

        return y, grad

    return f(x, alpha)


def mse_alpha(values: np.ndarray, bits: int, steps: int = 40) -> float:
    """The clip ``alpha`` minimising the quantization error of ``values`` (calibration activations)."""
    v = np.asarray(values, np.float64).ravel()
    top = float(v.max()) if v.size else 0.0
    if top <= 0:
        return 1.0
    n = 2 ** bits - 1
    best, best_err = top, np.inf
    for ratio in np.linspace(1.0, 0.2, steps):
        a = top * ratio
        q = np.round(np.clip(v, 0, a) / a * n) / n * a
        err = float(((v - q) ** 2).sum())
        if err < best_err:
            best, best_err = a, err
    return best


class PACTQuantizer(ConfigDefined, tfmot.quantization.keras.quantizers.Quantizer):
    """A TFMOT output quantizer: one learned ``alpha`` per layer, ``bits``-bit levels in int8 storage."""

    def __init__(self, bits: int = 4, clip_gradient: bool = False) -> None:
        self.bits = int(bits)
        self.clip_gradient = bool(clip_gradient)

    def build(self, tensor_shape, name, layer):
        alpha = layer.add_weight(name=f"{name}_alpha", shape=(), initializer=tf.keras.initializers.Constant(6.0),
                                 trainable=True)
        return {"alpha": alpha}

    def __call__(self, inputs, training, weights, **kwargs):
        return deployable_pact(inputs, clip(weights["alpha"]), self.bits, self.clip_gradient)

    def get_config(self) -> dict:
        return {"bits": self.bits, "clip_gradient": self.clip_gradient}
