"""``cpq``: Cluster-Promoting Quantization with DropBits (Lee et al. 2021, arXiv 2109.02100).

In grid coordinates ``u = w / s - o`` each weight has a categorical distribution over the
levels ``l`` near it, a discretised logistic centred at ``u`` with temperature ``TAU`` (steps):

    p_l  ~  sigmoid((l + 1/2 - u) / TAU) - sigmoid((l - 1/2 - u) / TAU)

over the ``WINDOW`` levels nearest ``u`` (beyond them the mass is below ``exp(-2 / TAU)``;
the window keeps 8-bit layers from a 255-way table per weight), renormalised. Training
forward: a level sampled from ``p`` (Gumbel-max); backward: the multi-class straight-through
estimator, the gradient of the expected level ``sum_l p_l * l``: it pulls each weight toward
the levels it is sampled onto, so weights cluster at grid points. Test time: the most
probable level, which is the nearest (hard rounding), as deployed.

DropBits: in training, each step a layer uses the grid with one bit fewer with probability
``DROP_RATE`` (every second level of the mid-tread grid; for 2 bits the outer levels
``+-1.5``), which the paper finds lowers the estimator's bias. Chosen here: a fixed rate per
layer; the paper's learned per-layer rates (learned bit widths) are not implemented yet.
"""
from __future__ import annotations

import numpy as np

from tinyq._tf import tf
from tinyq.quantizers.base import WeightQuantizer
from tinyq.quantizers.grid import Grid
from tinyq.quantizers.uniform import scale_grad, uniform_quantize

TAU = 0.25
WINDOW = 5
DROP_RATE = 0.1


def level_probabilities(u: tf.Tensor, g: Grid, tau: float = TAU) -> tuple[tf.Tensor, tf.Tensor]:
    """``(levels, p)``, each ``u.shape + (WINDOW,)``: codes-plus-offset near ``u`` and their probabilities."""
    c = tf.stop_gradient(tf.clip_by_value(tf.round(u), float(g.lo), float(g.hi)))
    half = WINDOW // 2
    codes = c[..., None] + tf.range(-half, half + 1, dtype=u.dtype)
    valid = (codes >= g.lo) & (codes <= g.hi)
    x = u[..., None]
    upper = tf.where(codes >= g.hi, tf.ones_like(codes), tf.sigmoid((codes + 0.5 - x) / tau))
    lower = tf.where(codes <= g.lo, tf.zeros_like(codes), tf.sigmoid((codes - 0.5 - x) / tau))
    mass = tf.where(valid, upper - lower, tf.zeros_like(codes)) + tf.cast(valid, u.dtype) * 1e-12
    return codes, mass / tf.reduce_sum(mass, axis=-1, keepdims=True)


def coarse(codes: tf.Tensor, g: Grid) -> tf.Tensor:
    """DropBits: the grid with one bit fewer (every second mid-tread level; 2-bit: the outer two)."""
    if g.offset:
        return tf.where(codes >= 0, float(g.hi), float(g.lo))
    top = 2 * (g.hi // 2)
    return tf.clip_by_value(2.0 * tf.round(codes / 2.0), float(-top), float(top))


def cpq_quantize(w: tf.Tensor, scale: tf.Tensor, g: Grid, seed: tf.Tensor | None = None,
                 drop: tf.Tensor | bool = False) -> tf.Tensor:
    """Sampled level (forward), expected level's gradient (backward); ``drop`` coarsens the grid."""
    n = 1
    for d in w.shape[:-1]:
        n *= int(d)
    s = scale_grad(scale, 1.0 / (n * max(g.hi, 1)) ** 0.5)
    u = w / s - g.offset
    codes, p = level_probabilities(u, g)
    expected = tf.reduce_sum(p * codes, axis=-1)
    gumbel = -tf.math.log(-tf.math.log(tf.random.uniform(tf.shape(p), 1e-9, 1.0) if seed is None else
                                       tf.random.stateless_uniform(tf.shape(p), seed, 1e-9, 1.0)))
    sampled = tf.reduce_sum(tf.one_hot(tf.argmax(tf.math.log(p + 1e-20) + gumbel, axis=-1), WINDOW) * codes, -1)
    sampled = tf.where(drop, coarse(sampled, g), sampled)
    return (tf.stop_gradient(sampled) + expected - tf.stop_gradient(expected) + g.offset) * s


class CPQ(WeightQuantizer):
    """CPQ's sampled levels with the multi-class straight-through estimator, and DropBits."""

    name = "cpq"

    def quantize(self, w, scale, weights, training):
        if not training:
            return uniform_quantize(w, scale, self.grid)
        drop = tf.random.uniform([]) < DROP_RATE
        return cpq_quantize(w, scale, self.grid, drop=drop)

    def diagnostics(self, w, weights) -> dict[str, float]:
        """Adds ``cpq_confidence``: the mean probability of each weight's nearest level (1 = clustered)."""
        from tinyq.quantizers.base import channels_last

        axis = -1 if self.channel_axis is None else self.channel_axis
        scale = tf.abs(weights["scale"]) + 1e-12
        _, p = level_probabilities(channels_last(w, axis) / scale - self.grid.offset, self.grid)
        return {**super().diagnostics(w, weights),
                "cpq_confidence": float(np.mean(p.numpy()[..., WINDOW // 2]))}
