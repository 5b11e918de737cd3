"""``sat``: scale-adjusted training's weight quantizer (Jin, Yang, Liao 2019, arXiv 1912.10207).

DoReFa's clamp ``w' = tanh(w) / max|tanh(w)|`` (per output channel here, as tinyq deploys
per-channel scales) maps the latent weights onto ``[-1, 1]``; they are rounded uniformly on
the b-bit grid spanning it (``u = w' * top - o``, codes ``clip(round(u), lo, hi)``, straight-
through), so the codes depend on the weights' shape, not on any clipping choice.

The scale adjustment: SAT multiplies ``Q(w')`` by ``1 / sqrt(n_out * Var(Q(w')))`` so the
effective weights keep the variance efficient training needs *with a batch norm after the
layer*, and folds that constant into the scale at inference. tinyq folds batch norm before
QAT (the deployed kernel is the trained one), so that constant and BN's per-channel gain are
one per-channel factor: the learned ``scale``, started by least squares so the quantized layer
reproduces the float layer (``scale_c = <w_c, l_c> / <l_c, l_c>`` with ``l_c`` the levels of
the channel's codes). Deployed weight: ``scale_c * (code + o)``.
"""
from __future__ import annotations

import numpy as np

from tinyq._tf import tf
from tinyq.quantizers.base import WeightQuantizer
from tinyq.quantizers.uniform import round_ste


def sat_codes(w: tf.Tensor, g) -> tf.Tensor:
    """Grid levels ``code + o`` of channels-last ``w`` after DoReFa's per-channel tanh clamp."""
    t = tf.tanh(w)
    axes = list(range(w.shape.rank - 1))
    clamped = t / (tf.reduce_max(tf.abs(t), axis=axes, keepdims=True) + 1e-12)
    u = clamped * g.top_level - g.offset
    return tf.clip_by_value(round_ste(u), float(g.lo), float(g.hi)) + g.offset


class SAT(WeightQuantizer):
    """SAT / DoReFa weight clamp, uniform rounding, per-channel learned scale (BN-folded SAT constant)."""

    name = "sat"

    def quantize(self, w, scale, weights, training):
        return sat_codes(w, self.grid) * scale

    def init_scale(self, w: np.ndarray) -> np.ndarray:
        axis = self.kernel_axis
        wc = np.moveaxis(w, axis, -1).reshape(-1, w.shape[axis]) if self.channel_axis is not None \
            else w.reshape(-1, 1)
        levels = sat_codes(tf.constant(wc, tf.float32), self.grid).numpy()
        num = (wc * levels).sum(axis=0)
        den = (levels * levels).sum(axis=0)
        return np.where(den > 0, np.abs(num) / np.maximum(den, 1e-12), 1e-8).astype(np.float32) + 1e-12
