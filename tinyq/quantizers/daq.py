"""``daq``: the Distance-Aware Quantizer (Kim et al., ICCV 2021, arXiv 2108.06983).

Distance-aware soft rounding (DASR) with a kernel soft argmax: in grid coordinates
``u = w / s - o`` with nearest code ``c = clip(round(u), lo, hi)``, only the levels
``c - 1, c, c + 1`` (those inside the grid) compete:

    u_soft = sum_j (c + j) * softmax_j(-beta * (u - c - j)^2),   j in {-1, 0, 1}

and the weight is ``(u_soft + o) * s``. Temperature controller (chosen where the summary leaves
it open): ``beta`` is set per weight, without gradient, from its distance to the nearest
level, ``beta = min(BETA_MAX, ln(1 / TOL) / (1 - 2 |u - c|))``. That is the smallest beta
for which the soft value lies within about ``TOL`` steps of the hard one (the nearer
neighbour's weight is ``exp(-beta * (1 - 2|d|))``), so training and test rounding agree
within the tolerance while the gradient ``d u_soft / d u`` stays non-zero.

Test time is hard rounding, and so is the value the layer computes with in training:
``hard + u_soft - stop_gradient(u_soft)``, DAQ's soft rounding in the backward pass only.
The controller keeps the two within ``TOL`` steps everywhere except within a sliver of a
decision boundary, where the soft value is a blend of two levels (for 2 bits a blend is not
a level at all), so the network trained is exactly the one deployed.
"""
from __future__ import annotations

import math

from tinyq._tf import tf
from tinyq.quantizers.base import WeightQuantizer, lsq_scale
from tinyq.quantizers.grid import Grid
from tinyq.quantizers.uniform import uniform_quantize

TOL = 0.05  # steps; below the container's half step at every bit width (2-bit: 0.25)
BETA_MAX = 50.0


def temperature(u: tf.Tensor, g: Grid) -> tf.Tensor:
    """The controller's ``beta`` for grid coordinates ``u`` (no gradient)."""
    c = tf.clip_by_value(tf.round(u), float(g.lo), float(g.hi))
    gap = tf.maximum(1.0 - 2.0 * tf.abs(u - c), 1e-3)  # 0 at a decision boundary, 1 on a level
    return tf.stop_gradient(tf.minimum(BETA_MAX, math.log(1.0 / TOL) / gap))


def dasr(u: tf.Tensor, beta: tf.Tensor, g: Grid) -> tf.Tensor:
    """Kernel soft argmax over the nearest level and its neighbours inside ``[lo, hi]``."""
    c = tf.stop_gradient(tf.clip_by_value(tf.round(u), float(g.lo), float(g.hi)))
    offsets = tf.constant([-1.0, 0.0, 1.0])
    levels = c[..., None] + offsets
    logits = -beta[..., None] * tf.square(u[..., None] - levels)
    valid = (levels >= g.lo) & (levels <= g.hi)
    logits = tf.where(valid, logits, tf.fill(tf.shape(logits), -1e9))
    return tf.reduce_sum(tf.nn.softmax(logits, axis=-1) * levels, axis=-1)


def daq_quantize(w: tf.Tensor, scale: tf.Tensor, g: Grid) -> tf.Tensor:
    """``(dasr(w / s - o) + o) * s`` with the controller's beta; ``w`` channels-last."""
    s = lsq_scale(w, scale, max(g.hi, 1))
    u = w / s - g.offset
    return (dasr(u, temperature(u, g), g) + g.offset) * s


class DAQ(WeightQuantizer):
    """DAQ's soft rounding while training, hard rounding at test time; learned per-channel scale."""

    name = "daq"

    def quantize(self, w, scale, weights, training):
        hard = uniform_quantize(w, scale, self.grid)
        if not training:
            return hard
        soft = daq_quantize(w, scale, self.grid)
        return tf.stop_gradient(hard) + soft - tf.stop_gradient(soft)

    def diagnostics(self, w, weights) -> dict[str, float]:
        latent, scale = self.live_latent(w, weights)
        u = latent / scale - self.grid.offset
        beta = temperature(u, self.grid)
        return {**super().diagnostics(w, weights), "daq_beta_median": float(_median(beta)),
                "daq_at_beta_max": float(tf.reduce_mean(tf.cast(beta >= BETA_MAX, tf.float32)))}


def _median(x: tf.Tensor) -> float:
    v = tf.sort(tf.reshape(x, [-1]))
    return float(v[tf.size(v) // 2])
