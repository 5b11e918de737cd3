"""``ste``: per-channel symmetric uniform quantization with a straight-through estimator.

Forward: ``Q(w) = s * (clip(round(w / s - o), lo, hi) + o)`` per output channel (grid in
``tinyq.quantizers.grid``). Backward: the rounding is the identity (STE; Bengio et al.
2013, arXiv 1308.3432), clipped weights get no gradient, and the scale ``s`` is learned with
the LSQ gradient and its ``1 / sqrt(n * hi)`` scaling (Esser et al. 2020, arXiv 1902.08153).
"""
from __future__ import annotations

from tinyq._tf import tf
from tinyq.quantizers.base import WeightQuantizer, lsq_scale
from tinyq.quantizers.grid import Grid


def round_ste(x: tf.Tensor) -> tf.Tensor:
    """``round(x)`` forward, identity backward."""
    return x + tf.stop_gradient(tf.round(x) - x)


def uniform_quantize(w: tf.Tensor, scale: tf.Tensor, g: Grid) -> tf.Tensor:
    """``s * (clip(round_ste(w / s - o), lo, hi) + o)``; ``w`` channels-last, ``scale`` per channel."""
    s = lsq_scale(w, scale, max(g.hi, 1))
    codes = tf.clip_by_value(round_ste(w / s - g.offset), float(g.lo), float(g.hi))
    return (codes + g.offset) * s


class UniformSTE(WeightQuantizer):
    """The baseline: uniform grid, STE, learned per-channel scale."""

    name = "ste"

    def quantize(self, w, scale, weights, training):
        return uniform_quantize(w, scale, self.grid)
