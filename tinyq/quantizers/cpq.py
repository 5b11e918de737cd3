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
``+-1.5``), which the paper finds lowers the estimator's bias, at a fixed rate per layer.

Learned bit widths (``learn_bits=True``, the paper's learned drop rates): the layer holds one
scale per width ``c_0 < c_1 < ... < c_K = bits`` of :data:`BIT_CHOICES` (the widths TFLM runs:
2-bit LUT, packed INT4, INT8) and a gate per step up, kept with probability
``pi_k = sigmoid(gate_gain * theta_k)``. Training samples ``z_k ~ Bernoulli(pi_k)`` and computes
with ``Q_0 + z_0 (Q_1 - Q_0 + z_1 (Q_2 - Q_1 + ...))`` (dropping a gate drops every width above
it); ``pi_k`` gets the straight-through gradient of ``z_k``. The layer's loss adds the price of
its expected bits, ``LEARN_BITS_COST * (n_l / N) * E[bits_l]`` (``n_l / N``: its share of the
learning layers' weights, ``size_weight``), so summed over layers the price is
``LEARN_BITS_COST`` per average bit. A gate stays open where dropping it costs the task more
than the bits it saves. The learned width: the widest ``c_k`` whose gates all have ``pi > 1/2``.
"""
from __future__ import annotations

import zlib

import numpy as np

from tinyq._tf import tf
from tinyq.quantizers.base import WeightQuantizer, lsq_scale, mse_scale, positive_scale
from tinyq.quantizers.grid import Grid, grid
from tinyq.quantizers.uniform import uniform_quantize

TAU = 0.25
WINDOW = 5
DROP_RATE = 0.1
BIT_CHOICES = (2, 4, 8)
LEARN_BITS_COST = 0.01  # loss units per average weight bit
GATE_TRAVEL = 8.0  # how far a gate's logit can move in a search (Adam moves theta ~lr per step)
GATE_START = 1.5  # keep logit at the start: every gate open (pi = 0.82), so layers start at --bits


def gate_gain(lr: float, steps: int) -> float:
    """``gain`` such that ``steps`` Adam steps of cosine-decayed ``lr`` move a logit up to GATE_TRAVEL.

    Why: QAT learning rates (1e-4) would move a plain logit by about 0.01 in an epoch; the gain
    makes the search's reach independent of the data size and learning rate.
    """
    steps = max(1, steps)
    cosine = 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * np.arange(steps) / steps))  # tinyq's schedule, alpha 0.05
    return float(GATE_TRAVEL / (lr * cosine.sum()))


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
    s = lsq_scale(w, scale, max(g.hi, 1))
    u = w / s - g.offset
    codes, p = level_probabilities(u, g)
    expected = tf.reduce_sum(p * codes, axis=-1)
    gumbel = -tf.math.log(-tf.math.log(tf.random.uniform(tf.shape(p), 1e-9, 1.0) if seed is None else
                                       tf.random.stateless_uniform(tf.shape(p), seed, 1e-9, 1.0)))
    sampled = tf.reduce_sum(tf.one_hot(tf.argmax(tf.math.log(p + 1e-20) + gumbel, axis=-1), WINDOW) * codes, -1)
    sampled = tf.where(drop, coarse(sampled, g), sampled)
    return (tf.stop_gradient(sampled) + expected - tf.stop_gradient(expected) + g.offset) * s


def bit_choices(bits: int) -> tuple[int, ...]:
    """The widths a ``bits``-bit layer may learn: those of :data:`BIT_CHOICES` below it, and ``bits``."""
    return tuple(c for c in BIT_CHOICES if c < bits) + (bits,)


def expected_bits(choices: tuple[int, ...], keep: tf.Tensor) -> tf.Tensor:
    """``E[bits] = c_0 + sum_k (c_{k+1} - c_k) * prod_{i<=k} pi_i`` for the nested gates."""
    total, reach = tf.constant(float(choices[0])), tf.constant(1.0)
    for k in range(len(choices) - 1):
        reach = reach * keep[k]
        total = total + (choices[k + 1] - choices[k]) * reach
    return total


def nest(levels: list[tf.Tensor], z: tf.Tensor) -> tf.Tensor:
    """``Q_0 + z_0 (Q_1 - Q_0 + z_1 (Q_2 - Q_1 + ...))``: gate ``k`` opens the widths above ``c_k``."""
    out = levels[-1]
    for k in reversed(range(len(levels) - 1)):
        out = levels[k] + z[k] * (out - levels[k])
    return out


class CPQ(WeightQuantizer):
    """CPQ's sampled levels with the multi-class straight-through estimator, DropBits, learned widths."""

    name = "cpq"
    learns_bits = True

    def __init__(self, bits: int = 8, channel_axis: int | None = -1, qgt: float = 0.0, learn_bits: bool = False,
                 size_weight: float = 0.0, gate_gain: float = 100.0, **kwargs) -> None:
        super().__init__(bits, channel_axis, qgt, **kwargs)
        self.learn_bits = bool(learn_bits) and len(bit_choices(self.bits)) > 1
        self.size_weight = float(size_weight)
        self.gate_gain = float(gate_gain)

    @property
    def choices(self) -> tuple[int, ...]:
        return bit_choices(self.bits) if self.learn_bits else (self.bits,)

    def build_extra(self, tensor_shape, name, layer) -> dict:
        # Draws are stateless, from (this kernel, training step): the step counter is a variable,
        # so a run resumed from a checkpoint draws exactly what the uninterrupted run drew
        self._key = zlib.crc32(f"{layer.name}/{name}".encode())
        step = {"step": layer.add_weight(name=f"{name}_cpq_step", shape=(), dtype=tf.int64, trainable=False,
                                         initializer=tf.keras.initializers.Zeros())}
        if not self.learn_bits:
            return step
        channels = 1 if self.channel_axis is None else int(tensor_shape[self.channel_axis])
        extra = {f"scale_w{c}": layer.add_weight(name=f"{name}_scale_w{c}", shape=(channels,),
                                                 initializer=tf.keras.initializers.Ones(), trainable=True)
                 for c in self.choices[:-1]}
        extra["keep"] = layer.add_weight(name=f"{name}_keep", shape=(len(self.choices) - 1,), trainable=True,
                                         initializer=tf.keras.initializers.Constant(GATE_START / self.gate_gain))
        return {**step, **extra}

    def step_variables(self, weights: dict) -> list:
        return super().step_variables(weights) + [weights[f"scale_w{c}"] for c in self.choices[:-1]
                                                  if f"scale_w{c}" in weights]

    def _seeds(self, weights: dict, n: int) -> tf.Tensor:
        """``n`` stateless seeds (``[n, 2]``) for this training step; advances the step counter."""
        step = weights["step"].assign_add(1)
        return tf.random.experimental.stateless_split(tf.stack([tf.constant(self._key, tf.int64), step]), n)

    def calibrate(self, w, weights) -> None:
        super().calibrate(w, weights)
        for c in self.choices[:-1]:
            weights[f"scale_w{c}"].assign(mse_scale(w, c, self.channel_axis))

    def keep_probabilities(self, weights: dict) -> tf.Tensor:
        return tf.sigmoid(self.gate_gain * weights["keep"])

    def learned_bits(self, weights: dict) -> int:
        """The widest width whose gates are all open (``pi > 1/2``); ``bits`` when not learning."""
        if not self.learn_bits:
            return self.bits
        open_ = self.keep_probabilities(weights).numpy() > 0.5
        return self.choices[int(np.cumprod(open_).sum())]

    def quantize(self, w, scale, weights, training):
        seeds = self._seeds(weights, 2 * len(self.choices) + 1) if training else None
        grids = [grid(c) for c in self.choices[:-1]] + [self.grid]
        levels = [self._quantize(w, s, g, None if seeds is None else seeds[2 * i:2 * i + 2])
                  for i, (g, s) in enumerate(zip(grids, self._scales(scale, weights)))]
        if not self.learn_bits:
            return levels[0]
        keep = self.keep_probabilities(weights)
        if seeds is None:
            return nest(levels, tf.cast(keep > 0.5, keep.dtype))
        hard = tf.cast(tf.random.stateless_uniform(tf.shape(keep), seeds[-1]) < keep, keep.dtype)
        return nest(levels, hard + keep - tf.stop_gradient(keep))  # straight-through: d out / d pi = d out / d z

    def _scales(self, scale, weights) -> list:
        return [positive_scale(weights[f"scale_w{c}"]) for c in self.choices[:-1]] + [scale]

    @staticmethod
    def _quantize(w, scale, g: Grid, seeds):
        """Hard rounding when ``seeds`` is None (inference); else DropBits (``seeds[0]``) and a sampled level."""
        if seeds is None:
            return uniform_quantize(w, scale, g)
        drop = tf.random.stateless_uniform([], seeds[0]) < DROP_RATE
        return cpq_quantize(w, scale, g, seed=seeds[1], drop=drop)

    def layer_losses(self, w, scale, weights) -> list:
        losses = super().layer_losses(w, scale, weights)
        if self.learn_bits:
            losses.append(LEARN_BITS_COST * self.size_weight *
                          expected_bits(self.choices, self.keep_probabilities(weights)))
        return losses

    def get_config(self) -> dict:
        return {**super().get_config(), "learn_bits": self.learn_bits, "size_weight": self.size_weight,
                "gate_gain": self.gate_gain}

    def diagnostics(self, w, weights) -> dict[str, float]:
        """Adds ``cpq_confidence``: the mean probability of each weight's nearest level (1 = clustered)."""
        latent, scale = self.live_latent(w, weights)
        _, p = level_probabilities(latent / scale - self.grid.offset, self.grid)
        out = {**super().diagnostics(w, weights), "cpq_confidence": float(np.mean(p.numpy()[..., WINDOW // 2]))}
        if self.learn_bits:
            keep = self.keep_probabilities(weights).numpy()
            out.update({"learned_bits": self.learned_bits(weights),
                        **{f"keep_{c}bit": float(pi) for c, pi in zip(self.choices[1:], keep)}})
        return out
