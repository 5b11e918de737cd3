"""``levels``: 2-bit weights on four levels that need not be evenly spaced, the inner one learned per layer.

TFLM runs a 2-bit tensor through DECODE, which expands 2-bit indices with a value table
(``tinyq.convert.lut``): any four int8 values cost the same bytes as the uniform grid's, and
one table serves the whole tensor when every channel uses the same four integers. So a 2-bit
layer's levels are ``{-1.5, -r, r, 1.5} * s_c`` (per-channel scale ``s_c``, one inner level
``r`` per layer):

    Q(w) = s * sign(w) * (1.5 if |w| / s >= (1.5 + r) / 2 else r)

In the int8 container (steps of ``s / 84``) they are -126, -k, k, 126 with ``k = round(84 r)``;
the forward pass uses ``k / 84`` so training computes what the file holds. ste's grid is
``k = 42``; the MSE-best four symmetric levels of a Gaussian put ``k`` near 38, of a Laplacian
near 29: heavy tails want the inner levels near zero and the outer ones far out.

Gradients: straight-through for ``w`` inside the range, LSQ's for ``s`` (Esser et al. 2020,
arXiv 1902.08153), ``dQ/dr = s * sign(w)`` over the weights on the inner levels (learned
levels as in LQ-Nets, Zhang et al. 2018, arXiv 1807.10029). Start: the ``k`` and per-channel
scales with the least squared error over the layer (Lloyd-Max's criterion, searched).

Other widths quantize as ste: INT4 and INT8 kernels read their integers directly, with no
table to hold other levels.
"""
from __future__ import annotations

import numpy as np

from tinyq._tf import tf
from tinyq.quantizers.base import WeightQuantizer, grid_distance, lsq_scale
from tinyq.quantizers.uniform import uniform_quantize

OUTER = 1.5  # the outer level in units of the scale: the clip, as ste's 2-bit grid
RATIO = 84  # container integers per unit of scale at 2 bits (tinyq.quantizers.grid: 1.5 -> 126)
K_CHOICES = range(2, 125, 2)  # inner integers the start searches


def inner_integer(inner: tf.Tensor) -> tf.Tensor:
    """``k = round(84 r)`` clipped to ``1..125``: the inner level's int8 value (no gradient)."""
    return tf.stop_gradient(tf.clip_by_value(tf.round(inner * RATIO), 1.0, OUTER * RATIO - 1))


def inner_level(inner: tf.Tensor) -> tf.Tensor:
    """``k / 84``: the inner level the file holds, exactly (``k / 84 + (r - r)``), with a
    straight-through gradient for ``r``."""
    return inner_integer(inner) / RATIO + (inner - tf.stop_gradient(inner))


def levels_quantize(w: tf.Tensor, scale: tf.Tensor, inner: tf.Tensor) -> tf.Tensor:
    """``s * sign(w) * (1.5 or r)`` per channel (``w`` channels last, ``scale`` per channel)."""
    s = lsq_scale(w, scale, 2)
    r = inner_level(inner)
    zero = tf.stop_gradient(0.0 * w)
    # The level is chosen by 168 |w / scale| >= 126 + k: an integer right side and one division of the
    # plain variables, as ste's rounding; the straight-through forms differ by an ulp between eager and
    # graph TensorFlow, and a weight on the threshold would take another level in the file than in training.
    outer = tf.abs(w / scale) * (2 * RATIO) >= OUTER * RATIO + inner_integer(inner)
    # Selects between full-size tensors, no casts of booleans: the converter's constant folding
    # skips an op whose result is over 8 KB and over twice its operands (a bool -> float cast, a
    # scalar broadcast), and an unfolded kernel leaves FakeQuantWithMinMaxVarsPerChannel as a flex op.
    magnitude = tf.where(outer, OUTER + zero, r + zero)
    level = tf.where(w >= 0, magnitude, -magnitude)
    # straight-through for w inside the range (and LSQ's -u/s for s); r's gradient is s * sign on the inner levels
    u = w / s
    return (level + tf.where(tf.abs(u) <= OUTER, u - tf.stop_gradient(u), zero)) * s


def levels_numpy(w: np.ndarray, s: np.ndarray, k: int) -> np.ndarray:
    """:func:`levels_quantize`'s forward in numpy (``w`` channels last)."""
    r = k / RATIO
    return np.sign(w) * np.where(np.abs(w) / s >= (OUTER + r) / 2, OUTER, r) * s


def best_start(w: np.ndarray, axis: int | None) -> tuple[int, np.ndarray]:
    """The inner integer ``k`` and per-channel scales with the least squared error over the layer.

    For each ``k``, each channel's scale is the best of 40 clips from ``max|w|`` down to 20% of it
    (as :func:`tinyq.quantizers.base.mse_scale`); the ``k`` whose channels add up to the least error wins.
    """
    w = np.asarray(w, np.float64)
    wc = w.reshape(-1, 1) if axis is None else np.moveaxis(w, axis, -1).reshape(-1, w.shape[axis])
    amax = np.maximum(np.abs(wc).max(axis=0), 1e-8)
    best_err, best_k, best_s = np.inf, 42, amax / OUTER
    for k in K_CHOICES:
        err_c, s_c = np.full(amax.shape, np.inf), amax / OUTER
        for ratio in np.linspace(1.0, 0.2, 40):
            s = amax * ratio / OUTER
            err = ((wc - levels_numpy(wc, s, k)) ** 2).sum(axis=0)
            better = err < err_c
            err_c, s_c = np.where(better, err, err_c), np.where(better, s, s_c)
        if err_c.sum() < best_err:
            best_err, best_k, best_s = err_c.sum(), k, s_c
    return best_k, best_s.astype(np.float32)


class LearnedLevels(WeightQuantizer):
    """2-bit layers: levels ``+-1.5 s, +-r s``, ``r`` learned per layer; other widths: ste's grid."""

    name = "levels"

    @property
    def lut(self) -> bool:
        """True when this layer's levels are free (2 bits): what needs the int8 container and a value table."""
        return self.bits == 2

    def build_extra(self, tensor_shape, name, layer):
        if not self.lut:
            return {}
        return {"inner": layer.add_weight(name=f"{name}_inner", shape=(), trainable=True,
                                          initializer=tf.keras.initializers.Constant(0.5))}

    def calibrate(self, w, weights):
        if not self.lut:
            return super().calibrate(w, weights)
        k, s = best_start(w, self.channel_axis)
        weights["inner"].assign(k / RATIO)
        weights["scale"].assign(s)

    def quantize(self, w, scale, weights, training):
        if not self.lut:
            return uniform_quantize(w, scale, self.grid)
        return levels_quantize(w, scale, weights["inner"])

    def level_values(self, weights: dict) -> list[float]:
        if not self.lut:
            return super().level_values(weights)
        r = float(inner_level(weights["inner"]))
        return [-OUTER, -r, r, OUTER]

    def storable(self, storage_bits: int | None) -> bool:
        # INT4 holds the 2-bit grid as -6, -2, 2, 6: an inner level of k / 84 fits only for k = 42
        return not (self.lut and storage_bits == 4)

    def set_own_table(self, weights: dict, index: int) -> None:
        # one k per layer (odd: no start takes it, starts are even), so no two tables coincide
        if self.lut:
            weights["inner"].assign((1 + 2 * (index % 62)) / RATIO)

    def distance(self, w, scale, weights):
        """QGT's distance: ``d^2`` to the nearest of the four levels in steps of ``s`` (ste's
        ``sin^2(pi d) / pi^2`` near a level), as ste's beyond the clip."""
        if not self.lut or weights is None or "inner" not in weights:
            return super().distance(w, scale, weights)
        a = tf.abs(w / tf.stop_gradient(scale))
        r = tf.stop_gradient(inner_level(weights["inner"]))
        inside = tf.square(tf.minimum(tf.abs(a - r), tf.abs(a - OUTER)))
        return tf.where(a <= OUTER, inside, grid_distance(w, scale, self.grid))

    def diagnostics(self, w, weights) -> dict[str, float]:
        """Adds ``inner_level``: the inner level's int8 value ``k`` (ste's grid: 42; the outer is 126)."""
        out = super().diagnostics(w, weights)
        if self.lut:
            out["inner_level"] = float(inner_integer(weights["inner"]))
        return out
