"""Apply a per-layer plan of :class:`QuantSpec` to a float Keras model through TFMOT.

Steps: fold batch norm into the preceding Conv2D / DepthwiseConv2D / Dense
(:mod:`tinyq.fold`, so the kernel training quantizes is the kernel the device runs), annotate every weight layer with a
:class:`TinyqQuantizeConfig`, ``quantize_apply`` with :class:`TinyqScheme`, and initialise
each per-channel scale by an MSE search on the float weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Mapping

import numpy as np

from tinyq._tf import keras, tfmot
from tinyq.errors import TinyqError
from tinyq.fold import fold
from tinyq.graph import L, WEIGHT_LAYERS, channel_axis, followed_by_relu, is_relu, kernel_attr, weight_layer_before
from tinyq.quantizers import registry
from tinyq.quantizers.pact import mse_alpha
from tinyq.spec import QuantSpec

tfq = tfmot.quantization.keras


class TinyqQuantizeConfig(tfq.QuantizeConfig):
    """Weights through a tinyq quantizer; the output through TFMOT's 8-bit moving-average one.

    ``quantize_output`` is False when a ReLU layer follows and quantizes instead, so the
    converter can fuse the activation into the op (no requantisation in between).
    """

    def __init__(self, weight_quantizer, attr: str = "kernel", quantize_output: bool = True):
        self.weight_quantizer = weight_quantizer
        self.attr = attr
        self.quantize_output = quantize_output

    def get_weights_and_quantizers(self, layer):
        return [(getattr(layer, self.attr), self.weight_quantizer)]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        setattr(layer, self.attr, quantize_weights[0])

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        if not self.quantize_output:
            return []
        return [tfq.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False,
                                                      narrow_range=False)]

    def get_config(self):
        return {"weight_quantizer": keras.utils.serialize_keras_object(self.weight_quantizer),
                "attr": self.attr, "quantize_output": self.quantize_output}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["weight_quantizer"] = keras.utils.deserialize_keras_object(
            config["weight_quantizer"], custom_objects=registry.custom_objects())
        return cls(**config)


class OutputQuantizeConfig(tfq.QuantizeConfig):
    """Only the layer's output is quantized: by ``quantizer`` (PACT after a ReLU), else 8-bit moving average.

    Used for ReLUs under an activation method, and for layers tinyq leaves float
    (``--allow-float``; explicit, because TFMOT's own fallback, ``OutputOnlyConfig``, cannot be
    loaded back from a saved model; the converter calibrates such a layer's weights).
    """

    def __init__(self, quantizer=None):
        self.quantizer = quantizer

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        if self.quantizer is not None:
            return [self.quantizer]
        return [tfq.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False,
                                                      narrow_range=False)]

    def get_config(self):
        return {"quantizer": None if self.quantizer is None else keras.utils.serialize_keras_object(self.quantizer)}

    @classmethod
    def from_config(cls, config):
        q = config.get("quantizer")
        return cls(None if q is None else keras.utils.deserialize_keras_object(
            q, custom_objects=registry.custom_objects()))


def _layout_transform():
    from tensorflow_model_optimization.python.core.quantization.keras import quantize_layout_transform
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_transforms)
    from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import (
        model_transformer)

    class InputOnlyLayout(quantize_layout_transform.QuantizeLayoutTransform):
        """Only quantize the model input: BN is already folded and ReLUs quantize themselves.

        TFMOT's default layout would replace a custom config with a no-op one wherever a
        ReLU follows a conv, dropping the weight quantizer.
        """

        def apply(self, model, layer_quantize_map):
            return model_transformer.ModelTransformer(
                model, [default_8bit_transforms.InputLayerQuantize()],
                set(layer_quantize_map.keys()), layer_quantize_map).transform()

    return InputOnlyLayout()


class TinyqScheme(tfq.QuantizeScheme):
    """TFMOT's 8-bit registry for layers without weights; only the input-quantize transform."""

    def get_layout_transformer(self):
        return _layout_transform()

    def get_quantize_registry(self):
        from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
            default_8bit_quantize_registry)
        return default_8bit_quantize_registry.Default8BitQuantizeRegistry()


def custom_objects() -> dict:
    from tinyq import layers

    return {"TinyqQuantizeConfig": TinyqQuantizeConfig, "OutputQuantizeConfig": OutputQuantizeConfig,
            **registry.custom_objects(), **layers.custom_objects()}


@dataclass(frozen=True)
class QATModel:
    """What :func:`build_qat` made: the QAT ``model``, the BN-folded float model it was made from
    (``folded``: same layer names and shapes, the feature teacher of :class:`tinyq.distill.Distiller`),
    the layers started from trained quantizers (``carried``) or from calibration because their
    trained grid did not survive folding (``restarted``), and the dead channels dropped per layer."""

    model: keras.Model
    folded: keras.Model
    carried: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    dropped_channels: dict[str, int] = field(default_factory=dict)


def quantize_model(model: keras.Model, plan: Mapping[str, QuantSpec] | None = None,
                   default: QuantSpec | None = None, calibration: np.ndarray | None = None,
                   keep_float: Collection[str] = (), learn_options: Mapping | None = None,
                   start: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> keras.Model:
    """The QAT model of :func:`build_qat`."""
    return build_qat(model, plan, default, calibration, keep_float, learn_options, start).model


def build_qat(model: keras.Model, plan: Mapping[str, QuantSpec] | None = None,
              default: QuantSpec | None = None, calibration: np.ndarray | None = None,
              keep_float: Collection[str] = (), learn_options: Mapping | None = None,
              start: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> QATModel:
    """QAT model: BN folded, weight layers quantized per ``plan`` (others by ``default``).

    ``start`` (:func:`tinyq.layers.trained_state` of a model built of tinyq layers) replaces the
    calibrated start of the layers it names by what they trained (:func:`start_from`).

    ``learn_options`` go to the quantizers of layers whose spec has ``learn_bits`` (CPQ's
    ``gate_gain``; see :mod:`tinyq.learnbits`).
    ``calibration`` (model-ready float inputs) sets activation ranges before training.
    Layers named in ``keep_float`` (names after :func:`tinyq.fold.fold_batchnorm`) keep float
    weights and computation; only their output is quantized (:class:`OutputQuantizeConfig`).
    """
    plan = dict(plan or {})
    default = default or QuantSpec()
    folding = fold(model)
    folded = folding.model
    unknown = set(plan) - {layer.name for layer in folded.layers}
    if unknown:
        raise TinyqError(f"plan names layers the model does not have: {sorted(unknown)}")

    # CPQ's learned widths price each layer's bits by its share of the learning layers' weights
    learning = {layer.name: int(np.prod(getattr(layer, kernel_attr(layer)).shape)) for layer in folded.layers
                if isinstance(layer, WEIGHT_LAYERS) and plan.get(layer.name, default).learn_bits}

    def annotate(layer):
        if layer.name in keep_float:
            return tfq.quantize_annotate_layer(layer, quantize_config=OutputQuantizeConfig())
        source = weight_layer_before(layer) if is_relu(layer) else None
        if source is not None:
            spec = plan.get(source.name, default)
            act = registry.parse(spec.method).activation_quantizer(spec.act_bits)
            if act is not None:  # PACT / CG-PACT after this weight layer
                # PACT's learned alpha is the clip: a fixed one (ReLU6, or a user's PACT as the float
                # model holds it, tinyq.layers.to_float) would cap alpha where it started
                relu = L.ReLU.from_config({**layer.get_config(), "max_value": None}) if isinstance(layer, L.ReLU) \
                    else L.ReLU(name=layer.name)
                return tfq.quantize_annotate_layer(relu, quantize_config=OutputQuantizeConfig(act))
        if isinstance(layer, WEIGHT_LAYERS):
            spec = plan.get(layer.name, default)
            options = ({"learn_bits": True, "size_weight": learning[layer.name] / sum(learning.values()),
                        **(learn_options or {})} if spec.learn_bits else {})
            quantizer = registry.parse(spec.method).weight_quantizer(spec.weight_bits, channel_axis(layer), **options)
            config = TinyqQuantizeConfig(quantizer, kernel_attr(layer),
                                         quantize_output=not followed_by_relu(layer))
            return tfq.quantize_annotate_layer(layer, quantize_config=config)
        if isinstance(layer, L.InputLayer):
            return layer
        return tfq.quantize_annotate_layer(layer)

    # clone_model hands clone_function the layers of `folded`, whose outbound links are intact.
    annotated = keras.models.clone_model(folded, clone_function=annotate)
    with tfq.quantize_scope(custom_objects()):
        qat = tfq.quantize_apply(annotated, scheme=TinyqScheme())
    calibrate_scales(qat)
    if calibration is not None:
        calibrate_activations(qat, folded, calibration)
    carried, restarted = start_from(qat, start) if start else ([], [])
    return QATModel(qat, folded, tuple(carried), tuple(restarted), folding.dropped_channels)


def quantized_layers(qat: keras.Model):
    """(wrapper, kernel variable, quantizer, its variables) for every tinyq-quantized layer."""
    for layer in qat.layers:
        for weight, quantizer, qvars in getattr(layer, "_weight_vars", []):
            if hasattr(quantizer, "grid"):
                yield layer, weight, quantizer, qvars


def diagnostics(qat: keras.Model) -> dict[str, dict[str, float]]:
    """Per quantized layer, what its quantizers report (QGT's grid distance, PACT's clip, ...)."""
    out = {layer.layer.name: quantizer.diagnostics(weight, qvars)
           for layer, weight, quantizer, qvars in quantized_layers(qat)}
    for layer in qat.layers:
        qvars = getattr(layer, "_output_quantizer_vars", None) or {}
        if "alpha" in qvars:
            out[layer.layer.name] = {"pact_alpha": float(abs(qvars["alpha"].numpy())),
                                     "act_bits": layer._output_quantizers[0].bits}
    return out


def calibrate_scales(qat: keras.Model) -> None:
    """Set each per-channel scale to its quantizer's start for the current float kernel (ste: MSE-best)."""
    for _, weight, quantizer, qvars in quantized_layers(qat):
        quantizer.calibrate(weight.numpy(), qvars)


def start_from(qat: keras.Model, state: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[list[str], list[str]]:
    """Start the layers named in ``state`` (:func:`tinyq.layers.trained_state`) from what they trained;
    returns (carried, restarted).

    The trainable quantizer variables and a PACT's ``alpha`` take the trained values; ramps and
    step counters stay QAT's. The latent kernel becomes ``latent_kernel`` if the quantizer then
    reproduces the kernel ``qat`` was built with (``k Q(w)``, what the user's layer computed),
    else ``k Q(w)`` itself if that reproduces it (SAT: ``k`` changes the codes of ``tanh(w)``);
    failing both (a per-tensor step under a per-channel ``k``, SAT at 8 bits) the layer keeps
    ``k Q(w)`` and its calibrated start and is listed as restarted.
    """
    carried, restarted = [], []
    for wrapper, weight, quantizer, qvars in quantized_layers(qat):
        name = wrapper.layer.name
        if name not in state:
            continue
        calibrated = {key: var.numpy() for key, var in qvars.items()}
        for key, var in qvars.items():
            if var.trainable and key in state[name] and state[name][key].shape == tuple(var.shape):
                var.assign(state[name][key])
        kernel = weight.numpy()
        tolerance = 1e-6 * max(np.abs(kernel).max(), 1e-12)
        for start in (state[name].get("latent_kernel"), kernel):
            if start is not None and start.shape == kernel.shape:
                weight.assign(start)
                if np.abs(quantizer(weight, False, qvars).numpy() - kernel).max() <= tolerance:
                    carried.append(name)
                    break
        else:
            weight.assign(kernel)
            for key, value in calibrated.items():
                qvars[key].assign(value)
            restarted.append(name)
    for wrapper in qat.layers:
        qvars = getattr(wrapper, "_output_quantizer_vars", None) or {}
        name = getattr(getattr(wrapper, "layer", None), "name", None)
        if "alpha" in qvars and "alpha" in state.get(name, {}):
            qvars["alpha"].assign(state[name]["alpha"])
            carried.append(name)
    return carried, restarted


def calibrate_activations(qat: keras.Model, folded: keras.Model, x: np.ndarray, batch: int = 64) -> None:
    """Set each output quantizer's range to the min/max its tensor takes on ``x``.

    Measured on the BN-folded float model; the input quantizer gets the range of ``x``.
    TFMOT's moving-average quantizers start at [-6, 6] and move with decay 0.999, and its
    input quantizer starts at [0, 0] (every input 0 until the first training step), so
    without this the quantized model is meaningless at step 0 and the first epochs run on
    badly scaled grids. The range always includes 0, as TFLite requires.
    """
    for layer in qat.layers:
        if type(layer).__name__ == "QuantizeLayer":  # the input: TFMOT starts it at [0, 0]
            layer.quantizer_vars["min_var"].assign(min(0.0, float(np.min(x))))
            layer.quantizer_vars["max_var"].assign(max(0.0, float(np.max(x))))
    wrappers = {layer.layer.name: layer for layer in qat.layers
                if getattr(layer, "_output_quantizer_vars", None) and hasattr(layer, "layer")}
    names = [layer.name for layer in folded.layers if layer.name in wrappers]
    if not names:
        return
    probe = keras.Model(folded.inputs, [folded.get_layer(n).output for n in names])
    lo = {n: 0.0 for n in names}
    hi = {n: 0.0 for n in names}
    sample: dict[str, list[np.ndarray]] = {n: [] for n in names}  # for PACT's clip search
    rng = np.random.default_rng(0)
    for i in range(0, len(x), batch):
        outs = probe(x[i:i + batch], training=False)
        for n, out in zip(names, outs if len(names) > 1 else [outs]):
            out = np.asarray(out).ravel()
            lo[n] = min(lo[n], float(out.min()))
            hi[n] = max(hi[n], float(out.max()))
            sample[n].append(rng.choice(out, size=min(out.size, 20000), replace=False))
    for n in names:
        qvars = wrappers[n]._output_quantizer_vars
        if "alpha" in qvars:  # PACT: the clip with the least b-bit error, not the max
            qvars["alpha"].assign(mse_alpha(np.concatenate(sample[n]), wrappers[n]._output_quantizers[0].bits))
        else:
            qvars["min_var"].assign(lo[n])
            qvars["max_var"].assign(hi[n])


def _assign_by_name(model: keras.Model, stored: Mapping[str, Mapping[str, np.ndarray]], source: str) -> None:
    """Set every layer's weights from ``stored`` ({layer name: {variable's last name part: value}}).

    By name, not position: a rebuilt QuantizeWrapper lists its trainable scale before the wrapped kernel.
    """
    for layer in model.layers:
        if not layer.weights:
            continue
        values = []
        for w in layer.weights:
            short = w.name.rsplit("/", 1)[-1]
            if short not in stored.get(layer.name, {}):
                raise TinyqError(f"{source}: no stored value for {w.name}; the file is from another "
                                 "tinyq version or damaged")
            values.append(stored[layer.name][short])
        layer.set_weights(values)


def with_storage(qat: keras.Model, bits: int | None) -> keras.Model:
    """``qat`` with its weights stored in ``bits``-bit containers (``tinyq convert --bits 4`` or 8: a
    lossless widening), a copy whose quantizers carry the wider container; ``qat`` itself for None or 2
    (every grid's own container)."""
    if bits in (None, 2):
        return qat
    unfit = [layer.layer.name for layer, _, quantizer, _ in quantized_layers(qat) if not quantizer.storable(bits)]
    if unfit:
        raise TinyqError(f"{len(unfit)} layers ({', '.join(unfit[:3])}{', ...' if len(unfit) > 3 else ''}) have "
                         f"2-bit levels that {bits}-bit storage cannot hold (method levels: -126, -k, k, 126 in int8); "
                         f"convert with --bits 2 (value tables) or 8, or train with another --method")
    config = qat.get_config()
    for lc in config["layers"]:
        qc = lc["config"].get("quantize_config") if isinstance(lc.get("config"), dict) else None
        if isinstance(qc, dict) and qc.get("class_name") == "TinyqQuantizeConfig":
            qc["config"]["weight_quantizer"]["config"]["storage_bits"] = bits
    with tfq.quantize_scope(custom_objects()):
        copy = keras.Model.from_config(config)
    _assign_by_name(copy, {layer.name: {w.name.rsplit("/", 1)[-1]: w.numpy() for w in layer.weights}
                           for layer in qat.layers}, "the QAT model")
    return copy


def load_model(path) -> keras.Model:
    """Load a Keras model (.h5, .keras, SavedModel) saved by tinyq or built from standard layers.

    QAT .h5 files are restored by variable name (:func:`_assign_by_name`).
    """
    path = str(path)
    try:
        return _load(path)
    except TinyqError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:  # h5py and Keras on a truncated or foreign file
        raise TinyqError(f"cannot load {path!r} as a Keras model ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                         "the file is damaged or not a Keras model: train or export it again") from None


def _load(path: str) -> keras.Model:
    import h5py

    with tfq.quantize_scope(custom_objects()):
        if not path.endswith(".h5"):
            return keras.models.load_model(path, compile=False)
        with h5py.File(path, "r") as f:
            config = f.attrs["model_config"]
            config = config.decode() if isinstance(config, bytes) else config
            if "QuantizeWrapper" not in config:
                return keras.models.load_model(path, compile=False)
            model = keras.models.model_from_json(config)
            group = f["model_weights"]
            stored = {}
            for layer in model.layers:
                if layer.weights:
                    g = group[layer.name]
                    names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs["weight_names"]]
                    # the wrapped layer's variables come back under the wrapper's name scope
                    stored[layer.name] = {n.rsplit("/", 1)[-1]: g[n][()] for n in names}
            _assign_by_name(model, stored, repr(path))
    return model
