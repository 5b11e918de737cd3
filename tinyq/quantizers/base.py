"""What every weight quantizer shares: per-channel scale variables and the converter's view.

A weight quantizer is a TFMOT ``Quantizer``: ``build`` creates its variables on the layer,
``__call__`` returns the weights the layer computes with. Every tinyq weight quantizer ends
with :func:`to_container`, a per-channel ``FakeQuantWithMinMaxVarsPerChannel`` whose grid
contains the method's grid, so the TFLite converter stores exactly the integers training
used (INT8 or packed INT4) with no special case per method.
"""
from __future__ import annotations

import abc
import math

import numpy as np

from tinyq._tf import tf, tfmot
from tinyq.quantizers.grid import Grid, grid

DEAD_STEP = 1e-7  # a channel quantized with a smaller container step holds only weights below ~1e-6: exactly 0


def channels_last(w: tf.Tensor, channel_axis: int) -> tf.Tensor:
    """Move the output-channel axis last (depthwise kernels [h, w, c, 1] -> [h, w, 1, c])."""
    if channel_axis in (-1, w.shape.rank - 1):
        return w
    perm = list(range(w.shape.rank))
    perm[channel_axis], perm[-1] = perm[-1], perm[channel_axis]
    return tf.transpose(w, perm)


def positive_scale(s: tf.Tensor) -> tf.Tensor:
    """``|s| + 1e-12``: the step a weight quantizer computes with (the trained variable may change
    sign; the floor keeps ``w / s`` finite for a dead channel)."""
    return tf.abs(s) + 1e-12


def scale_grad(s: tf.Tensor, factor: float) -> tf.Tensor:
    """``s`` forward; its gradient multiplied by ``factor``."""
    return s * factor + tf.stop_gradient(s - s * factor)


def lsq_scale(w: tf.Tensor, scale: tf.Tensor, top_code) -> tf.Tensor:
    """The per-channel step with LSQ's gradient scale ``1 / sqrt(n * top_code)``, ``n`` the weights per
    channel of channels-last ``w`` (Esser et al. 2020, arXiv 1902.08153)."""
    n = 1
    for d in w.shape[:-1]:
        n *= int(d)
    return scale_grad(scale, 1.0 / (n * top_code) ** 0.5)


def to_container(w_q: tf.Tensor, scale: tf.Tensor, g: Grid, per_channel: bool = True) -> tf.Tensor:
    """Per-channel fake-quant onto the container grid; the identity on ``w_q``'s levels.

    ``w_q`` (channels last) already lies on ``(code + offset) * scale``. The container step is
    ``scale / step_ratio`` and its range ``+-container_max * step``, so the fake-quant op
    changes no value, passes gradients straight through, and tells the converter the scale.
    """
    step = tf.stop_gradient(scale / g.step_ratio)
    bound = step * g.container_max
    if not per_channel:
        return tf.quantization.fake_quant_with_min_max_vars(
            w_q, -bound[0], bound[0], num_bits=g.container_bits, narrow_range=True)
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(
        w_q, -bound, bound, num_bits=g.container_bits, narrow_range=True)


def mse_scale(w: np.ndarray, bits: int, channel_axis: int | None = -1, steps: int = 40) -> np.ndarray:
    """Per-channel scale minimising ``||w - Q(w)||^2`` over clipping ratios of ``max|w|``.

    Searched, not ``max|w| / top_level``: at 2 bits one outlier would otherwise put most
    weights into the two inner levels. ``channel_axis=None``: one scale for the tensor.
    """
    g = grid(bits)
    w = np.asarray(w, np.float64)
    wc = w.reshape(-1, 1) if channel_axis is None else np.moveaxis(w, channel_axis, -1).reshape(-1, w.shape[channel_axis])
    amax = np.maximum(np.abs(wc).max(axis=0), 1e-8)
    best_err = np.full(amax.shape, np.inf)
    best = amax / g.top_level
    for ratio in np.linspace(1.0, 0.2, steps):
        s = amax * ratio / g.top_level
        q = (np.clip(np.round(wc / s - g.offset), g.lo, g.hi) + g.offset) * s
        err = ((wc - q) ** 2).sum(axis=0)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = np.where(better, s, best)
    return best.astype(np.float32)


def grid_distance(w: tf.Tensor, scale: tf.Tensor, g: Grid) -> tf.Tensor:
    """QGT's per-weight distance to the grid, in units of the step (Ghamari et al. 2021, arXiv 2103.06231).

    ``r(w) = sin^2(pi * (w/s - o)) / pi^2`` inside the grid's range (0 on every level, at most
    ``1/pi^2`` half-way between two; smooth, so its gradient points to the nearest level),
    ``((|w|/s - top) / top)^2`` beyond it: the distance to the clip level (the nearest) as a
    fraction of the range. In units of ``s`` so layers of any weight magnitude weigh alike;
    ``s`` gets no gradient from it (the task sets the scale, the regulariser moves the weights).

    Why the range and not the step beyond the clip: the MSE-searched clip cuts outliers on
    purpose, and in steps their distance grows with ``2^b``, so the 8-bit layers a 2-bit model
    keeps would drown the 2-bit layers' signal; as a fraction of the range an outlier costs the
    same at any width.
    """
    s = tf.stop_gradient(scale)
    u = w / s
    inside = tf.square(tf.sin(math.pi * (u - g.offset))) / math.pi ** 2
    outside = tf.square(tf.nn.relu(tf.abs(u) - g.top_level) / g.top_level)
    return tf.where(tf.abs(u) <= g.top_level, inside, outside)


def _calling_layer():
    """The Keras layer whose ``call`` is running (where ``add_loss`` takes a tensor), or None when
    tinyq calls a quantizer directly (conversion checks, diagnostics)."""
    from tf_keras.src.engine import base_layer_utils

    context = base_layer_utils.call_context()
    return context.layer if context.in_call else None


class ConfigDefined:
    """A quantizer is its constructor arguments: rebuilt from ``get_config``, equal when they are."""

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other


class WeightQuantizer(ConfigDefined, tfmot.quantization.keras.quantizers.Quantizer):
    """Base for tinyq's weight quantizers: stores ``bits`` and ``channel_axis``, owns ``scale``.

    ``channel_axis=None`` quantizes per tensor: Dense kernels, whose per-axis fake-quant the
    converter cannot transpose into TFLite's [out, in] layout.

    ``qgt > 0`` adds QGT's regulariser to the layer's losses: ``qgt * ramp * mean(r(w))`` with
    :func:`grid_distance` and ``ramp`` (a non-trainable variable, 0 -> 1) set by
    :class:`tinyq.quantizers.qgt.QGTRamp` as training progresses. Any method takes it
    (``qgt+daq``): the regulariser acts on the latent weights, the method on the forward pass.

    Subclasses implement :meth:`quantize` (channels-last weights, per-channel scale ->
    quantized weights on the grid) and may add variables in :meth:`build_extra`.
    """

    name = ""  # registry key

    def __init__(self, bits: int = 8, channel_axis: int | None = -1, qgt: float = 0.0,
                 storage_bits: int | None = None, **kwargs) -> None:
        self.bits = int(bits)
        self.channel_axis = None if channel_axis is None else int(channel_axis)
        self.qgt = float(qgt)
        # the container the converter stores the weights in: None for the trained grid's own,
        # 4 or 8 to widen it (tinyq convert --bits); a copy of the model carries it (tinyq.qat.with_storage)
        self.storage_bits = None if storage_bits is None else int(storage_bits)

    @property
    def grid(self) -> Grid:
        return grid(self.bits, self.storage_bits)

    @property
    def kernel_axis(self) -> int:
        """The kernel axis the per-channel scales run along (-1 for a per-tensor scale)."""
        return -1 if self.channel_axis is None else self.channel_axis

    @property
    def dead_scale(self) -> float:
        """The scale under which a channel computes with exactly 0: a step of ``DEAD_STEP`` in the
        trained grid's container, whatever the storage (a wider one must not revive a channel)."""
        return DEAD_STEP * grid(self.bits).step_ratio

    def build(self, tensor_shape, name, layer):
        channels = 1 if self.channel_axis is None else int(tensor_shape[self.channel_axis])
        scale = layer.add_weight(
            name=f"{name}_scale", shape=(channels,), initializer=tf.keras.initializers.Ones(),
            trainable=True)
        # warm-up: training blends float and quantized weights, w + r (Q(w) - w); r = 1 unless a
        # tinyq.quantizers.qgt.Ramp raises it from 0 over the first part of QAT. QGT's lambda
        # likewise: 1 (full) unless a Ramp runs, so a user's plain fit of a qgt layer gets QGT
        extra = {"quant_ramp": layer.add_weight(name=f"{name}_quant_ramp", shape=(),
                                                initializer=tf.keras.initializers.Ones(), trainable=False)}
        if self.qgt:
            extra["qgt_ramp"] = layer.add_weight(name=f"{name}_qgt_ramp", shape=(),
                                                 initializer=tf.keras.initializers.Ones(), trainable=False)
        return {"scale": scale, **extra, **self.build_extra(tensor_shape, name, layer)}

    def init_scale(self, w: np.ndarray) -> np.ndarray:
        """The per-channel scale to start from for float kernel ``w``: the MSE-best (:func:`mse_scale`)."""
        return mse_scale(w, self.bits, self.channel_axis)

    def calibrate(self, w: np.ndarray, weights: dict) -> None:
        """Set the scale variables to their start for float kernel ``w`` (before QAT, after BN folding)."""
        weights["scale"].assign(self.init_scale(w))

    def build_extra(self, tensor_shape, name, layer) -> dict:
        return {}

    def step_variables(self, weights: dict) -> list:
        """The step sizes among this quantizer's variables (trained with relative steps: :mod:`tinyq.optim`)."""
        return [weights["scale"]]

    def layer_losses(self, w: tf.Tensor, scale: tf.Tensor, weights: dict) -> list[tf.Tensor]:
        """Loss terms this quantizer adds to its layer while training (QGT's regulariser when ``qgt``)."""
        return [self.qgt * weights["qgt_ramp"] * self.regulariser(w, scale, weights)] if self.qgt else []

    @abc.abstractmethod
    def quantize(self, w: tf.Tensor, scale: tf.Tensor, weights: dict, training) -> tf.Tensor:
        """Quantized ``w`` (channels last), on ``(code + offset) * scale`` when not training."""

    def latent(self, w: tf.Tensor, weights: dict) -> tuple[tf.Tensor, tf.Tensor]:
        """The kernel with its channels last, and the per-channel :func:`positive_scale` it is quantized with."""
        return channels_last(w, self.kernel_axis), positive_scale(weights["scale"])

    def __call__(self, inputs, training, weights, **kwargs):
        axis = self.kernel_axis
        w, scale = self.latent(inputs, weights)
        owner = _calling_layer()  # the wrapper (or tinyq layer) this quantizer's kernel belongs to
        if owner is not None:
            for loss in self.layer_losses(w, scale, weights):
                owner.add_loss(loss)
        # A channel dropped as dead but kept for its bias (tinyq.prune) starts at a step of ~1e-9; its
        # weights are exactly 0, so the channel stays the constant it is in the float model, whatever
        # its latent weights do (they get no gradient) and whatever the converter's scale floor.
        w_q = tf.where(scale < self.dead_scale, 0.0, self.quantize(w, scale, weights, training))
        if training and "quant_ramp" in weights:  # no container op: training only, never converted
            return channels_last(w + weights["quant_ramp"] * (w_q - w), axis)
        w_q = to_container(w_q, scale, self.grid, per_channel=self.channel_axis is not None)
        return channels_last(w_q, axis)

    def distance(self, w: tf.Tensor, scale: tf.Tensor, weights: dict | None) -> tf.Tensor:
        """Per weight (channels last), QGT's distance to this quantizer's levels: :func:`grid_distance`."""
        return grid_distance(w, scale, self.grid)

    def level_values(self, weights: dict) -> list[float]:
        """The levels a channel's weights take, in units of its scale: the grid's."""
        return self.grid.levels

    def storable(self, storage_bits: int | None) -> bool:
        """Whether a container of ``storage_bits`` (``tinyq convert --bits``) holds this quantizer's levels."""
        return True

    def set_own_table(self, weights: dict, index: int) -> None:
        """Give this layer (the ``index``-th quantized one) a value table no other layer holds,
        where its levels are learned per layer and so, once trained, are its own; a no-op for a
        fixed grid, whose table every layer shares. Only for measuring a trained file's size before
        training (:func:`tinyq.mixed.budget.planned_file`): layers that start alike would share
        one table in the untrained file."""

    def regulariser(self, w: tf.Tensor, scale: tf.Tensor, weights: dict | None = None) -> tf.Tensor:
        """QGT's value for this layer: the mean :meth:`distance` of its live channels' weights
        (channels last; 0 when every channel is dead).

        A dead channel (scale under :attr:`dead_scale`) computes with exactly 0 whatever its latent
        weights; measured in its ~1e-9 step, their drift would swamp the live channels' value.
        """
        live = scale >= self.dead_scale
        d = self.distance(w, tf.where(live, scale, tf.ones_like(scale)), weights)
        d = tf.where(tf.broadcast_to(live, tf.shape(d)), d, tf.zeros_like(d))
        n = tf.reduce_sum(tf.cast(live, d.dtype)) * tf.cast(tf.size(d) // tf.size(live), d.dtype)
        return tf.reduce_sum(d) / tf.maximum(n, 1.0)

    def live_latent(self, w: tf.Tensor, weights: dict) -> tuple[tf.Tensor, tf.Tensor]:
        """:meth:`latent` without the dead channels, or whole when none is live (for diagnostics:
        eager, shapes vary)."""
        latent, scale = self.latent(w, weights)
        live = scale >= self.dead_scale
        if scale.shape[0] != latent.shape[-1] or not bool(tf.reduce_any(live)):  # per-tensor scale, or all dead
            return latent, scale
        return tf.boolean_mask(latent, live, axis=latent.shape.rank - 1), tf.boolean_mask(scale, live)

    def diagnostics(self, w: tf.Tensor, weights: dict) -> dict[str, float]:
        """Numbers that show how the layer takes quantization (report.json, ``tinyq report``).

        ``grid_distance``: QGT's regulariser value (mean squared distance to the grid in steps;
        ``1/(2 pi^2) = 0.051`` for weights spread uniformly between levels, 0 on the grid):
        layers that stay high resist quantization (candidates for more bits). Dead channels are
        left out (:meth:`regulariser`).
        """
        return {"grid_distance": float(self.regulariser(*self.latent(w, weights), weights))}

    def with_storage(self, storage_bits: int | None) -> "WeightQuantizer":
        """This quantizer with its weights stored in ``storage_bits`` containers."""
        return type(self).from_config({**self.get_config(), "storage_bits": storage_bits})

    def get_config(self) -> dict:
        config = {"bits": self.bits, "channel_axis": self.channel_axis, "qgt": self.qgt}
        if self.storage_bits is not None:  # only a conversion copy has one: trained models' configs stay as they were
            config["storage_bits"] = self.storage_bits
        return config
