"""The Keras QAT model computed in TFLite's integer arithmetic: what its file should compute.

The QAT model rounds in float: ``fq(relu(conv(x, Q(w)) + b))``. The int8 kernels its file
runs on compute from integers: ``acc = sum((x_q - z_in) * w_q) + round(b / (s_in s_w))``,
then ``y_q = MultiplyByQuantizedMultiplier(acc, M) + z_out`` with ``M = s_in s_w / s_out``
rounded twice (:mod:`tinyq.fixedpoint`), an average pool that rounds its sum and then
requantizes, a fixed-point softmax. The two agree but for values near a rounding boundary,
and at 2 bits those few differences grow through the layers to flip a few near-tie decisions.

:class:`IntegerModel` takes the same trained integers and ranges straight from the QAT model
(weights by its quantizers, activation ranges by TFMOT's min/max variables, nudged as
TFLite nudges them) and runs them as the reference kernels do. Its outputs are TFLM's outputs
of a faithful conversion: where they differ, the file does not hold what was trained.
``tinyq check`` reports its agreement with TFLM beside the float model's.

Covered: the layers tinyq's QAT models are made of (input quantize, Conv2D, DepthwiseConv2D,
Dense, ReLU / ReLU6 / PACT, AveragePooling2D, GlobalAveragePooling2D, Flatten / Reshape /
Dropout, softmax) in a chain. Anything else raises :class:`NotEmulated`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from tinyq._tf import keras, tf
from tinyq.convert.constants import FIT, dead_channels
from tinyq.convert.converter import kernel_integers
from tinyq.fixedpoint import multiply_by_quantized_multiplier as mbqm
from tinyq.fixedpoint import (multiply_real_by_quantized_multiplier, multiply_rounded_once, quantize_multiplier,
                              softmax_int8)
from tinyq.qat import quantized_layers
from tinyq.quantizers.pact import clip

L = keras.layers


class NotEmulated(Exception):
    """The model has a layer :class:`IntegerModel` does not compute; the message names it."""


class Tensor:
    """An int8 activation: integers ``q`` (int64 array) with ``real = scale * (q - zero_point)``.

    ``exact``: the float64 scale the converter derived ``scale`` (float32, in the file) from;
    it quantizes the next layer's bias with it.
    """

    def __init__(self, q: np.ndarray, scale: np.float32, zero_point: int, exact: float | None = None) -> None:
        self.q, self.scale, self.zero_point = q, np.float32(scale), int(zero_point)
        self.exact = np.float64(self.scale if exact is None else exact)


class Accumulator:
    """A weight layer's int32 accumulators (bias added), waiting for the output range to requantize to."""

    def __init__(self, acc: np.ndarray, scale: np.ndarray, activation: str = "linear", top: float | None = None) -> None:
        self.acc, self.scale, self.activation, self.top = acc, scale, activation, top


def nudged(lo: float, hi: float) -> tuple[np.float32, int, float]:
    """``(scale, zero_point, exact)`` of an int8 tensor whose FakeQuant range is ``[lo, hi]``, as the
    converter derives it: ``exact = (hi - lo) / 255`` in double, stored as float32 ``scale``,
    ``z = round(-128 - lo / s)`` clamped to int8 (the range made to hold 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0:
        raise NotEmulated("an activation range is empty: the model has not seen data (train or calibrate it)")
    scale = (hi - lo) / 255.0
    z = -128 - lo / scale
    return np.float32(scale), int(np.clip(np.round(z), -128, 127)), scale


def requantize(acc: Accumulator, scale: np.float32, zero_point: int, exact: float | None = None,
               multiply: Callable = mbqm) -> Tensor:
    """``acc`` onto the int8 grid ``(scale, zero_point)``, clamped as the fused activation clamps it
    (ReLU at the zero point; ReLU6 and PACT's MINIMUM at ``acc.top``)."""
    q, shift = quantize_multiplier(acc.scale / np.float64(scale))
    y = multiply(acc.acc, q, shift) + zero_point
    lo = zero_point if acc.activation == "relu" else -128
    hi = 127 if acc.top is None else min(127, zero_point + int(np.round(acc.top / np.float64(scale))))
    return Tensor(np.clip(y, max(lo, -128), hi), scale, zero_point, exact)


def _vars(wrapper) -> dict[str, np.ndarray]:
    return {v.name.split("/")[-1].split(":")[0]: v.numpy() for v in wrapper.weights}


def _output_range(wrapper) -> tuple[np.float32, int, float] | None:
    v = _vars(wrapper)
    return nudged(v["output_min"], v["output_max"]) if "output_min" in v else None


def _activation_of(layer) -> tuple[str, float | None]:
    """``(kind, top)``: ``linear``, ``relu`` (clamped at ``top`` if given: ReLU6) or ``softmax``."""
    if isinstance(layer, L.ReLU):
        if layer.negative_slope or layer.threshold:
            raise NotEmulated(f"layer {layer.name!r}: a leaky or thresholded ReLU")
        return "relu", None if layer.max_value is None else float(layer.max_value)
    if isinstance(layer, L.Softmax):
        return "softmax", None
    name = getattr(layer.activation, "__name__", str(layer.activation))
    kinds = {"linear": ("linear", None), "relu": ("relu", None), "relu6": ("relu", 6.0), "softmax": ("softmax", None)}
    if name not in kinds:
        raise NotEmulated(f"layer {layer.name!r}: activation {name!r}")
    return kinds[name]


def _weight_layer(model: "IntegerModel", wrapper, x: Tensor):
    """Conv2D / DepthwiseConv2D / Dense: integer accumulators, requantized now if the layer has its own range."""
    layer = wrapper.layer
    if layer.name not in model.quantizers:
        raise NotEmulated(f"layer {layer.name!r} keeps float weights (the converter quantizes them after training)")
    weight, quantizer, qvars = model.quantizers[layer.name]
    ints, step, step64 = kernel_integers(weight, quantizer, qvars)
    xin = (x.q - x.zero_point).astype(np.float64)  # integers below 2^53: float64 sums them exactly
    if isinstance(layer, L.DepthwiseConv2D):
        acc = tf.nn.depthwise_conv2d(xin, ints, [1, *layer.strides, 1], layer.padding.upper(),
                                     dilations=layer.dilation_rate).numpy()
    elif isinstance(layer, L.Conv2D):
        acc = tf.nn.conv2d(xin, ints, [1, *layer.strides, 1], layer.padding.upper(),
                           dilations=layer.dilation_rate).numpy()
    else:
        if xin.ndim != 2:
            raise NotEmulated(f"layer {layer.name!r}: a Dense on a {xin.ndim}-D input")
        acc = xin @ ints
    w_scale = step.astype(np.float64)
    bias = layer.bias.numpy().astype(np.float64) if layer.use_bias else np.zeros(step.size)
    in_scale = np.float64(x.scale)
    bias_unit = x.exact * step64  # the converter divides by the unrounded scales
    # a dead channel kept for its bias: the step tinyq.convert.constants gives it, from the file's scales
    dead = dead_channels(ints, 2 if isinstance(layer, L.DepthwiseConv2D) else -1)
    fit = dead & (np.abs(bias) / (in_scale * w_scale) > FIT) & (step.size > 1)
    refit = np.abs(bias) / (in_scale * FIT)
    w_scale = np.where(fit, np.float32(refit), w_scale)
    bias_unit = np.where(fit, in_scale * refit, bias_unit)
    if model.real_bias:
        acc = np.round(acc) + bias / bias_unit
    else:
        acc = np.round(acc).astype(np.int64) + np.round(bias / bias_unit).astype(np.int64)
    kind, top = _activation_of(layer)
    if kind == "softmax":
        raise NotEmulated(f"layer {layer.name!r}: a softmax inside a weight layer")
    scale = in_scale * w_scale
    if isinstance(layer, L.Dense):  # FULLY_CONNECTED multiplies the two scales in float32 first
        scale = (np.float32(x.scale) * w_scale.astype(np.float32)).astype(np.float64)
    pending = Accumulator(acc, scale, kind, top)
    out = _output_range(wrapper)
    multiply = model.dense_multiply if isinstance(layer, L.Dense) else model.multiply
    return pending if out is None else requantize(pending, *out, multiply=multiply)


def softmax(x: Tensor) -> Tensor:
    return Tensor(softmax_int8(x.q, x.scale), np.float32(1 / 256), -128)


def _activation(model: "IntegerModel", wrapper, x):
    """A ReLU / ReLU6 / PACT after a weight layer (fused into it: one requantization), or a softmax."""
    layer = wrapper.layer
    kind, top = _activation_of(layer)
    if kind == "softmax" and isinstance(x, Tensor):
        return softmax(x)
    if kind != "relu" or not isinstance(x, Accumulator) or x.activation != "linear":
        raise NotEmulated(f"layer {layer.name!r}: a {kind} not right after a linear weight layer")
    qvars = getattr(wrapper, "_output_quantizer_vars", None) or {}
    if "alpha" in qvars:  # PACT: the 8-bit range [0, 255 alpha / n], then the MINIMUM op at alpha
        n = 2 ** wrapper._output_quantizers[0].bits - 1
        alpha = np.float32(clip(qvars["alpha"]).numpy())
        out, top = nudged(0.0, np.float32(alpha * np.float32(255.0 / n))), min(float(alpha), top or np.inf)
    else:
        out = _output_range(wrapper)
    if out is None:
        raise NotEmulated(f"layer {layer.name!r} has no output range")
    return requantize(Accumulator(x.acc, x.scale, "relu", top), *out, multiply=model.multiply)


def _divide_rounding(total: np.ndarray, n: int) -> np.ndarray:
    """``total / n`` rounded half away from zero in C integers, as the pooling kernels divide."""
    return np.where(total > 0, (total + n // 2) // n, -((-(total - n // 2)) // n))


def _average_pool(model: "IntegerModel", wrapper, x: Tensor) -> Tensor:
    """AVERAGE_POOL_2D on the input's grid (raw int8 values averaged), then a QUANTIZE to the layer's range."""
    layer = wrapper.layer
    (kh, kw), strides = layer.pool_size, tuple(layer.strides)
    if layer.padding != "valid" or strides != (kh, kw):
        raise NotEmulated(f"layer {layer.name!r}: an average pool with padding or overlapping windows")
    b, h, w, c = x.q.shape
    h, w = h // kh, w // kw
    total = x.q[:, :h * kh, :w * kw].reshape(b, h, kh, w, kw, c).sum(axis=(2, 4))
    pooled = Tensor(np.clip(_divide_rounding(total, kh * kw), -128, 127), x.scale, x.zero_point, x.exact)
    return _quantize(pooled, _output_range(wrapper), model.multiply)


def _quantize(x: Tensor, out: tuple[np.float32, int, float] | None, multiply: Callable = mbqm) -> Tensor:
    """The QUANTIZE op (int8 to int8) the converter puts where a layer's range differs from its input's."""
    if out is None or (out[0] == x.scale and out[1] == x.zero_point):
        return x
    q, shift = quantize_multiplier(np.float64(x.scale) / np.float64(out[0]))
    return Tensor(np.clip(multiply(x.q - x.zero_point, q, shift) + out[1], -128, 127), *out)


def _mean(model: "IntegerModel", wrapper, x: Tensor) -> Tensor:
    """MEAN over height and width (GlobalAveragePooling2D), as the int8 reference kernel computes it:
    the multiplier of ``s_in / s_out`` shifted left by ``floor(log2 n)`` and divided by ``n``
    (integer division), then ``sum(x - z_in)`` requantized by it, plus ``z_out``."""
    scale, zero_point, exact = _output_range(wrapper)
    n = x.q.shape[1] * x.q.shape[2]
    q, shift = quantize_multiplier(np.float64(x.scale) / np.float64(scale))
    bits = min(int(n).bit_length() - 1, 32, 31 + int(shift))
    q, shift = (q << bits) // n, shift - bits
    total = (x.q - x.zero_point).sum(axis=(1, 2))
    y = np.clip(model.multiply(total, q, shift) + zero_point, -128, 127)
    return Tensor(y.reshape((y.shape[0], *wrapper.output_shape[1:])), scale, zero_point, exact)  # keepdims


def _reshape(model: "IntegerModel", wrapper, x):
    if isinstance(x, Accumulator):
        raise NotEmulated(f"layer {wrapper.layer.name!r} reshapes an unquantized output")
    if isinstance(wrapper.layer, L.Dropout):
        return x
    return Tensor(x.q.reshape((x.q.shape[0], *wrapper.output_shape[1:])), x.scale, x.zero_point, x.exact)


LAYERS: dict[type, Callable] = {
    L.Conv2D: _weight_layer, L.DepthwiseConv2D: _weight_layer, L.Dense: _weight_layer,
    L.Activation: _activation, L.ReLU: _activation, L.Softmax: _activation,
    L.AveragePooling2D: _average_pool, L.GlobalAveragePooling2D: _mean,
    L.Flatten: _reshape, L.Reshape: _reshape, L.Dropout: _reshape,
}


def _handler(wrapper, pool_as_mean: bool = False) -> Callable:
    if pool_as_mean and isinstance(wrapper.layer, L.AveragePooling2D):
        return _mean
    for cls in type(wrapper.layer).__mro__:
        if cls in LAYERS:
            return LAYERS[cls]
    raise NotEmulated(f"layer {wrapper.layer.name!r} ({type(wrapper.layer).__name__}) has no integer version here")


class IntegerModel:
    """A Keras QAT model (:func:`tinyq.qat.quantize_model`) run in the integer kernels' arithmetic.

    Raises :class:`NotEmulated` on construction if the model has a layer it cannot compute.
    The options swap one integer step for what the float Keras model computes (a diagnostic of
    where the two part, not what a file computes): ``pool_as_mean``, an average pool as a MEAN
    (one requantization of the integer sum); ``rounding="once"``, ``acc * M`` rounded once
    instead of the kernels' two roundings (``"litert"``: only FULLY_CONNECTED's, as LiteRT's
    reference kernel rounds); ``real_bias``, the bias kept real instead of rounded to the int32
    grid ``s_in * s_w``.
    """

    ROUNDINGS = ("kernels", "once", "litert")

    def __init__(self, qat: keras.Model, *, pool_as_mean: bool = False, rounding: str = "kernels",
                 real_bias: bool = False) -> None:
        if rounding not in self.ROUNDINGS:
            raise ValueError(f"rounding must be one of {self.ROUNDINGS}; got {rounding!r}")
        self.real_bias = real_bias
        self.multiply = (multiply_rounded_once if rounding == "once" else
                         multiply_real_by_quantized_multiplier if real_bias else mbqm)
        self.dense_multiply = multiply_rounded_once if rounding == "litert" else self.multiply
        self.quantizers = {w.layer.name: (weight, q, qv) for w, weight, q, qv in quantized_layers(qat)}
        self.steps: list[tuple[object, Callable]] = []
        self.input_range = None
        for layer in qat.layers:
            if isinstance(layer, L.InputLayer):
                continue
            inbound = layer._inbound_nodes[0].inbound_layers if layer._inbound_nodes else []
            if isinstance(inbound, list) and len(inbound) > 1:
                raise NotEmulated(f"layer {layer.name!r} has {len(inbound)} inputs: only chains are emulated")
            if type(layer).__name__ == "QuantizeLayer":
                self.input_range = nudged(*(v.numpy() for v in layer.weights[:2]))
                continue
            if not hasattr(layer, "layer"):
                raise NotEmulated(f"layer {layer.name!r} ({type(layer).__name__}) is not quantized")
            self.steps.append((layer, _handler(layer, pool_as_mean)))
        if self.input_range is None:
            raise NotEmulated("the model has no input quantization")

    def input_tensor(self, x: np.ndarray) -> Tensor:
        """The model-ready float inputs ``x`` on the input's int8 grid."""
        scale, zero_point, exact = self.input_range
        q = np.round(np.asarray(x, np.float64) / np.float64(scale)) + zero_point  # as tinyq.runtimes.quantize_input does
        return Tensor(np.clip(q, -128, 127).astype(np.int64), scale, zero_point, exact)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """int8 outputs (int64 array) for the model-ready float inputs ``x``."""
        t = self.input_tensor(x)
        for wrapper, handler in self.steps:
            t = handler(self, wrapper, t)
        if isinstance(t, Accumulator):
            raise NotEmulated("the model's output has no int8 range")
        return t.q

    def predict(self, x: np.ndarray, batch: int = 64) -> np.ndarray:
        return np.concatenate([self(x[i:i + batch]) for i in range(0, len(x), batch)])
