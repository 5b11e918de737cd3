"""Keras layers that quantize as they train: ``QuantConv2D``, ``QuantDepthwiseConv2D``, ``QuantDense``, ``PACT``.

Place them in your own model, as QKeras' layers::

    from tinyq.layers import PACT, QuantConv2D
    x = QuantConv2D(16, 1, method="qgt", bits=2, use_bias=False)(x)
    x = BatchNormalization()(x)
    x = PACT(bits=4)(x)

Each weight layer is the Keras layer it names plus a weight quantizer from the registry
(``method``: ``ste``, ``qgt``, ``daq``, ``sat``, ``cpq``, ``qgt+daq``, ...; ``bits``: 2..8),
applied to its kernel in every forward pass: ``y = conv(x, Q(w))`` with the method's gradient.
``PACT`` is a ReLU clipped to a learned ``alpha`` on ``2^bits`` levels (``clip_gradient=True``:
CG-PACT). They serialise with ``get_config``; load a saved model with
``custom_objects=tinyq.layers.custom_objects()`` (or :func:`tinyq.qat.load_model`).
:func:`quantize_layers` puts them into a whole float model for you, by the same plan
``tinyq train`` and ``tinyq quantize`` use.

Deploying: ``tinyq quantize MODEL`` reads every tinyq layer of ``MODEL`` as that layer's plan
(its method and bits win over ``--bits``/``--method``; a ``PACT`` adds its activation method
and bits to the weight layer before it), then runs the pipeline: BN folding, QAT with these
quantizers started from what they trained (:func:`trained_state`, :func:`tinyq.qat.start_from`),
conversion verified against the trained integers, 2-bit LUT for TFLM.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import numpy as np

from tinyq._tf import keras, tf
from tinyq.errors import TinyqError
from tinyq.graph import L, channel_axis, weight_layer_before
from tinyq.quantizers import registry
from tinyq.quantizers.pact import clip, deployable_pact
from tinyq.spec import QuantSpec



class _Scoped:
    """Builds a deserialised layer inside its name scope, as a call would."""

    def build_from_config(self, config) -> None:
        # Keras builds a layer rebuilt from a config outside its name scope: every such layer's
        # weights would be "kernel:0", and a trained model's .h5 (optimizer slots named after
        # the weights) would fail with "name already exists"
        with tf.name_scope(self._name_scope()):
            super().build_from_config(config)


class _QuantizedKernel(_Scoped):
    """The kernel through ``registry.parse(method).weight_quantizer(bits)``; mixed into a Keras weight layer."""

    kernel_attr = "kernel"

    def __init__(self, *args, method: str = "ste", bits: int = 8, **kwargs) -> None:
        spec = QuantSpec(method=method, weight_bits=bits)  # "expected one of ...", unsupported bits
        if registry.parse(method).activations is not None:
            raise TinyqError(f"method {method!r} quantizes activations; a {type(self).__name__} takes a weight "
                             "method (ste, qgt, daq, sat, cpq, ...): put a tinyq.layers.PACT after it")
        super().__init__(*args, **kwargs)
        self.method, self.bits = spec.method, spec.weight_bits

    def build(self, input_shape) -> None:
        super().build(input_shape)
        kernel = getattr(self, self.kernel_attr)
        self.quantizer = registry.parse(self.method).weight_quantizer(self.bits, channel_axis(self))
        self.quantizer_vars = self.quantizer.build(kernel.shape, self.kernel_attr, self)
        calibrate_layer(self)

    def call(self, inputs, training=None):
        kernel = getattr(self, self.kernel_attr)
        quantized = tf.__internal__.smart_cond.smart_cond(
            False if training is None else training,
            lambda: self.quantizer(kernel, True, self.quantizer_vars),
            lambda: self.quantizer(kernel, False, self.quantizer_vars))
        # object.__setattr__: Keras' own would untrack the kernel variable and re-add it last,
        # reordering the layer's weights (and so every .h5 saved by position)
        object.__setattr__(self, self.kernel_attr, quantized)
        try:
            return super().call(inputs)
        finally:
            object.__setattr__(self, self.kernel_attr, kernel)

    def get_config(self) -> dict:
        return {**super().get_config(), "method": self.method, "bits": self.bits}


class QuantConv2D(_QuantizedKernel, L.Conv2D):
    """``keras.layers.Conv2D`` with its kernel quantized by ``method`` at ``bits`` (per output channel)."""


class QuantDepthwiseConv2D(_QuantizedKernel, L.DepthwiseConv2D):
    """``keras.layers.DepthwiseConv2D`` with its kernel quantized by ``method`` at ``bits`` (per channel)."""

    kernel_attr = "depthwise_kernel"


class QuantDense(_QuantizedKernel, L.Dense):
    """``keras.layers.Dense`` with its kernel quantized by ``method`` at ``bits`` (per tensor, as TFLite needs)."""


class PACT(_Scoped, L.Layer):
    """``y = alpha * round(clip(x, 0, alpha) / alpha * n) / n``, ``n = 2^bits - 1``, ``alpha`` learned.

    PACT (Choi et al. 2018, arXiv 1805.06085); ``clip_gradient=True`` is CG-PACT (Jin, Yang,
    Liao 2019, arXiv 1912.10207), which keeps the clip's gradient below ``alpha``. Computed by
    the ops TFLite deploys (:func:`tinyq.quantizers.pact.deployable_pact`).
    """

    def __init__(self, bits: int = 4, clip_gradient: bool = False, alpha: float = 6.0, **kwargs) -> None:
        QuantSpec(method="pact", act_bits=bits)  # unsupported bits fail as on the command line
        super().__init__(**kwargs)
        self.bits, self.clip_gradient, self.alpha_start = int(bits), bool(clip_gradient), float(alpha)

    @property
    def method(self) -> str:
        return "cgpact" if self.clip_gradient else "pact"

    def build(self, input_shape) -> None:
        self.alpha = self.add_weight(name="alpha", shape=(), trainable=True,
                                     initializer=keras.initializers.Constant(self.alpha_start))
        super().build(input_shape)

    def call(self, inputs):
        return deployable_pact(inputs, clip(self.alpha), self.bits, self.clip_gradient)

    def get_config(self) -> dict:
        return {**super().get_config(), "bits": self.bits, "clip_gradient": self.clip_gradient,
                "alpha": self.alpha_start}


WEIGHT_CLASSES = {L.Conv2D: QuantConv2D, L.DepthwiseConv2D: QuantDepthwiseConv2D, L.Dense: QuantDense}
FLOAT_CLASSES = {q: f for f, q in WEIGHT_CLASSES.items()}


def custom_objects() -> dict:
    """The classes Keras needs to load a model holding tinyq layers."""
    return {cls.__name__: cls for cls in (*FLOAT_CLASSES, PACT)}


def calibrate_layer(layer: _QuantizedKernel) -> None:
    """Start the layer's quantizer (its scale: the MSE-best) from its current kernel."""
    with tf.init_scope():  # build may run inside a traced function; the kernel is an eager variable
        layer.quantizer.calibrate(getattr(layer, layer.kernel_attr).numpy(), layer.quantizer_vars)


def calibrate(model: keras.Model) -> None:
    """Re-start every tinyq layer's quantizer from its kernel: after ``set_weights`` or loading float weights."""
    for layer in model.submodules:
        if isinstance(layer, _QuantizedKernel) and layer.built:
            calibrate_layer(layer)


def declared(model: keras.Model) -> dict[str, dict]:
    """What the model's tinyq layers declare, per weight layer: ``{"method", "weight_bits"}`` of a
    Quant* layer, ``{"activations", "act_bits"}`` of a ``PACT`` after it (through BatchNormalization)."""
    out: dict[str, dict] = {}
    for layer in model.layers:
        if isinstance(layer, _QuantizedKernel):
            out.setdefault(layer.name, {}).update(method=layer.method, weight_bits=layer.bits)
        elif isinstance(layer, PACT):
            source = weight_layer_before(layer, through=(L.BatchNormalization,))
            if source is None:
                raise TinyqError(f"PACT layer {layer.name!r} must follow a Conv2D, DepthwiseConv2D or Dense "
                                 "(optionally through a BatchNormalization): tinyq deploys it as that layer's output")
            out.setdefault(source.name, {}).update(activations=layer.method, act_bits=layer.bits)
    return out


def apply_declared(plan: Mapping[str, QuantSpec], decl: Mapping[str, dict]) -> dict[str, QuantSpec]:
    """``plan`` with what the tinyq layers declare: a Quant* layer's method and bits replace the plan's,
    a PACT's activation method and bits join the layer's spec (two activation methods fail)."""
    merged = dict(plan)
    for name, d in decl.items():
        spec = merged.get(name, QuantSpec())
        if "method" in d:
            acts = registry.parse(spec.method).activations
            spec = replace(spec, method=d["method"] + (f"+{acts.name}" if acts else ""), weight_bits=d["weight_bits"])
        if "activations" in d:
            spec = replace(spec, method=f"{spec.method}+{d['activations']}", act_bits=d["act_bits"])
        merged[name] = spec
    return merged


def _rebuilt(model: keras.Model, rewrite) -> keras.Model:
    """``model`` rebuilt from its config with ``rewrite(layer, layer_config)`` applied, weights copied by name."""
    from tinyq.fold import as_functional

    model = as_functional(model)
    layers = {layer.name: layer for layer in model.layers}
    config = model.get_config()
    for lc in config["layers"]:
        before = lc["class_name"]
        rewrite(layers[lc["name"]], lc)
        if lc["class_name"] != before:  # Keras looks a layer up by these before its class name
            tinyq = lc["class_name"] in custom_objects()
            lc.update(module="tinyq.layers" if tinyq else "keras.layers", registered_name=lc["class_name"] if tinyq else None)
    with keras.utils.custom_object_scope(custom_objects()):
        new = keras.Model.from_config(config)
    for layer in new.layers:
        old = {w.name.split("/")[-1]: w for w in layers[layer.name].weights}
        for w in layer.weights:
            if w.name.split("/")[-1] in old:
                w.assign(old[w.name.split("/")[-1]])
    calibrate(new)
    return new


def quantized_kernel(layer: _QuantizedKernel) -> np.ndarray:
    """The kernel ``layer`` computes with in inference: ``Q(w)``, on its grid."""
    return layer.quantizer(getattr(layer, layer.kernel_attr), False, layer.quantizer_vars).numpy()


def to_float(model: keras.Model, latent: bool = False) -> keras.Model:
    """The plain Keras model under the tinyq layers: Quant* layers become the layer they extend,
    holding the kernel the model computes with, ``Q(w)`` (``latent=True``: the latent ``w``), and
    a ``PACT`` a ``ReLU`` clipped at its trained ``alpha`` (what :func:`declared` reads stays with
    the weight layers' plan).

    With ``Q(w)`` the float model computes what the tinyq model does but for activation
    rounding: the teacher, and the start, of ``tinyq quantize``. (An unclipped ReLU would teach
    the student activations the user's model never had: above ``alpha`` it saturates.)
    """
    kernels = {layer.name: quantized_kernel(layer) for layer in model.layers
               if isinstance(layer, _QuantizedKernel) and not latent}

    def rewrite(layer, lc):
        if isinstance(layer, _QuantizedKernel):
            lc["class_name"] = FLOAT_CLASSES[type(layer)].__name__
            for key in ("method", "bits"):
                lc["config"].pop(key)
        elif isinstance(layer, PACT):
            lc["class_name"] = "ReLU"
            lc["config"] = {"name": lc["config"]["name"], "trainable": True, "dtype": lc["config"].get("dtype"),
                            "max_value": float(clip(layer.alpha)), "negative_slope": 0.0,
                            "threshold": 0.0}

    new = _rebuilt(model, rewrite)
    for name, kernel in kernels.items():
        layer = new.get_layer(name)
        getattr(layer, "depthwise_kernel" if isinstance(layer, L.DepthwiseConv2D) else "kernel").assign(kernel)
    return new


def trained_state(model: keras.Model) -> dict[str, dict[str, np.ndarray]]:
    """What the tinyq layers trained, as the BN-folded model holds it (:func:`tinyq.fold.fold_batchnorm`),
    by layer name: each Quant* layer's quantizer variables (``scale``, ...) and ``latent_kernel``,
    each ``PACT``'s ``alpha``. :func:`tinyq.qat.quantize_model` starts from them (``start=``), so
    ``tinyq quantize`` deploys the grid the user trained and fine-tunes it as training left it.

    Folding multiplies a kernel by ``k`` per output channel; a step ``s`` becomes ``s |k|`` (``k Q(w)``
    lies on that grid, the grids being symmetric) unless it is a dead channel's, which stays under
    the dead threshold; channels dropped as dead drop from both. Why the latent kernel and not
    ``Q(w)``: on the grid itself, every outer weight sits on the clip, and LSQ's step gradient
    then shrinks the carried steps.
    """
    from tinyq.fold import fold

    latent = fold(to_float(model, latent=True))
    state: dict[str, dict[str, np.ndarray]] = {}
    for layer in model.layers:
        if isinstance(layer, PACT):
            state[layer.name] = {"alpha": layer.alpha.numpy()}
        if not isinstance(layer, _QuantizedKernel):
            continue
        q, qvars = layer.quantizer, layer.quantizer_vars
        k = np.abs(np.asarray(latent.fold_factors.get(layer.name, 1.0), np.float32)).ravel()
        k = k if q.channel_axis is not None else k.max()  # a per-channel k cannot fold into one step
        kept = latent.kept_channels.get(layer.name) if q.channel_axis is not None else None
        steps = {id(v) for v in q.step_variables(qvars)}
        state[layer.name] = {"latent_kernel": latent.model.get_layer(layer.name).get_weights()[0]}
        for key, var in qvars.items():
            value = var.numpy()
            if id(var) in steps:
                value = np.where(np.abs(value) < q.dead_scale, value, value * k)
                value = value if kept is None else value[kept]
            state[layer.name][key] = value
    return state


def quantize_layers(model: keras.Model, bits: int = 8, method: str = "ste", keep_8bit=None, act_bits: int = 8,
                    plan: Mapping[str, QuantSpec] | None = None) -> keras.Model:
    """A copy of a float ``model`` built of tinyq layers, ready to train in Keras.

    Each Conv2D, DepthwiseConv2D and Dense becomes its Quant* layer with the spec ``plan`` gives
    it (by default :func:`tinyq.plan.default_plan`: ``bits`` and ``method`` everywhere but the
    ``keep_8bit`` layers); where the spec has an activation method (``method="sat+cgpact"``),
    the ReLU after the layer (through BatchNormalization) becomes a ``PACT`` of ``act_bits``.
    """
    from tinyq.plan import KEEP_CHOICES, default_plan

    if plan is None:
        plan = default_plan(model, bits, method, KEEP_CHOICES if keep_8bit is None else keep_8bit, act_bits)

    def rewrite(layer, lc):
        if type(layer) in WEIGHT_CLASSES and layer.name in plan:
            spec = plan[layer.name]
            lc["class_name"] = WEIGHT_CLASSES[type(layer)].__name__
            lc["config"].update(method="+".join(p for p in spec.method.split("+")
                                                if registry.get(p).kind != "activations"),
                                bits=spec.weight_bits)
        elif isinstance(layer, L.ReLU) or (isinstance(layer, L.Activation) and
                                           getattr(layer.activation, "__name__", "") in ("relu", "relu6")):
            source = weight_layer_before(layer, through=(L.BatchNormalization,))
            acts = registry.parse(plan[source.name].method).activations if source and source.name in plan else None
            if acts is not None:
                lc["class_name"] = "PACT"
                lc["config"] = {"name": layer.name, "trainable": True, "dtype": lc["config"].get("dtype"),
                                "bits": plan[source.name].act_bits, "clip_gradient": acts.name == "cgpact"}

    return _rebuilt(model, rewrite)
