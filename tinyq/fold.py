"""Rewrite a float model for QAT: activations split out of weight layers, whole-map average
pools made global, batch norm folded.

The rewrites edit the functional model's config and copy weights by layer name.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from tinyq._tf import keras
from tinyq.graph import L, WEIGHT_LAYERS


@dataclass(frozen=True)
class Folded:
    """A folded model and what maps the original's per-channel values onto it.

    ``fold_factors``: each folded layer's ``k`` (below); ``kept_channels``: the channels kept
    where some were dropped as dead; ``dropped_channels``: how many each layer lost.
    """

    model: keras.Model
    dropped_channels: dict[str, int] = field(default_factory=dict)
    fold_factors: dict[str, np.ndarray] = field(default_factory=dict)
    kept_channels: dict[str, np.ndarray] = field(default_factory=dict)


def as_functional(model: keras.Model) -> keras.Model:
    """``model`` as a functional model (a Sequential's layers rewired as one; others unchanged)."""
    if isinstance(model, keras.Sequential):
        return keras.Model(model.inputs, model.outputs, name=model.name)
    return model


def _rewire(config: dict, rename: dict[str, str]) -> None:
    """Point inbound references and model outputs named in ``rename`` at their new layers."""
    for lc in config["layers"]:
        for node in lc["inbound_nodes"]:
            for inbound in node:
                inbound[0] = rename.get(inbound[0], inbound[0])
    config["output_layers"] = [[rename.get(o[0], o[0]), *o[1:]] for o in config["output_layers"]]


def split_activations(config: dict) -> dict:
    """Move a non-linear activation out of each Conv2D / DepthwiseConv2D / Dense into its own layer.

    Why: the converter keeps a Dense layer's per-tensor fake-quant only when no activation
    is fused into it (with ``activation="softmax"`` it requantizes the weights per channel,
    losing the trained grid), and a separate ReLU lets the converter fuse it into the op.
    """
    config = copy.deepcopy(config)
    renames: dict[str, str] = {}
    out = []
    for lc in config["layers"]:  # topological order: a layer's inputs come before it
        for node in lc["inbound_nodes"]:
            for inbound in node:
                inbound[0] = renames.get(inbound[0], inbound[0])
        out.append(lc)
        act = lc["config"].get("activation")
        if lc["class_name"] not in ("Conv2D", "DepthwiseConv2D", "Dense") or act in (None, "linear"):
            continue
        lc["config"]["activation"] = "linear"
        name = f"{lc['name']}_activation"
        out.append({"class_name": "Activation", "name": name, "inbound_nodes": [[[lc["name"], 0, 0, {}]]],
                    "config": {"name": name, "activation": act, "trainable": True,
                               "dtype": lc["config"].get("dtype", "float32")}})
        renames[lc["name"]] = name
    config["layers"] = out
    config["output_layers"] = [[renames.get(o[0], o[0]), *o[1:]] for o in config["output_layers"]]
    return config


def global_pools(config: dict, layers: dict) -> dict:
    """Make each AveragePooling2D whose window is its whole input a ``GlobalAveragePooling2D(keepdims=True)``.

    The same values, the same name and output shape, ``mean(x)`` over height and width. Why:
    TFLite's AVERAGE_POOL_2D averages on its input's int8 grid, ``round(sum(q) / n)``, before
    requantizing to the output range; behind a 4-bit activation that grid has 16 levels, and the
    pooled values land many output steps from what training computed. MEAN requantizes the
    integer sum straight to the output range.
    """
    config = copy.deepcopy(config)
    for lc in config["layers"]:
        layer = layers.get(lc["name"])
        if (not isinstance(layer, L.AveragePooling2D) or len(lc["inbound_nodes"]) != 1  # a shared pool: left as is
                or layer.data_format != "channels_last" or layer.padding != "valid"
                or tuple(layer.pool_size) != tuple(layer.input_shape[1:3])):
            continue
        lc["class_name"] = "GlobalAveragePooling2D"
        lc["config"] = {"name": lc["name"], "trainable": lc["config"].get("trainable", True),
                        "dtype": lc["config"].get("dtype", "float32"), "data_format": "channels_last",
                        "keepdims": True}
    return config


def fold_batchnorm(model: keras.Model, drop_dead: bool = True) -> keras.Model:
    """The model of :func:`fold`."""
    return fold(model, drop_dead).model


def fold(model: keras.Model, drop_dead: bool = True) -> Folded:
    """A copy of ``model`` with activations split out (:func:`split_activations`), whole-map
    average pools made global (:func:`global_pools`), each BatchNormalization folded into the
    weight layer before it and (``drop_dead``) the dead channels dropped
    (:func:`tinyq.prune.drop_dead_channels`), with what maps a per-channel value of the original
    layer (a trained scale) onto the folded one (:class:`Folded`).

    ``w' = w * gamma / sqrt(var + eps)`` per output channel, ``b' = (b - mean) * gamma /
    sqrt(var + eps) + beta``. Folded before QAT (as TFLite folds it at conversion), so the
    grid that training sees is the grid that is deployed. A BN that does not follow a weight
    layer with no other consumer is kept.
    """
    model = as_functional(model)
    layers = {layer.name: layer for layer in model.layers}
    config = global_pools(split_activations(model.get_config()), layers)
    consumers: dict[str, int] = {}
    for lc in config["layers"]:
        for node in lc["inbound_nodes"]:
            for inbound in node:
                consumers[inbound[0]] = consumers.get(inbound[0], 0) + 1

    folds: dict[str, str] = {}  # bn name -> weight layer name
    for lc in config["layers"]:
        layer = layers.get(lc["name"])
        if not isinstance(layer, L.BatchNormalization) or len(lc["inbound_nodes"]) != 1:
            continue
        src = lc["inbound_nodes"][0][0][0]
        prev = layers.get(src)  # a split-out activation is not in the old model: no fold
        if (isinstance(prev, WEIGHT_LAYERS) and consumers.get(src) == 1
                and layer.axis in ([-1], [len(layer.input_shape) - 1], -1)):
            folds[lc["name"]] = src
    for lc in config["layers"]:
        if lc["name"] in folds.values():
            lc["config"]["use_bias"] = True
    config["layers"] = [lc for lc in config["layers"] if lc["name"] not in folds]
    _rewire(config, folds)
    folded = keras.Model.from_config(config)

    by_src = {v: k for k, v in folds.items()}
    factors: dict[str, np.ndarray] = {}
    for layer in folded.layers:
        old = layers.get(layer.name)
        if old is None:  # a split-out activation: no weights
            continue
        if layer.name not in by_src:
            layer.set_weights(old.get_weights())
            continue
        bn = layers[by_src[layer.name]]
        w = old.get_weights()
        kernel = w[0]
        gamma = bn.gamma.numpy() if bn.scale else 1.0
        beta = bn.beta.numpy() if bn.center else 0.0
        k = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
        factors[layer.name] = k
        bias = w[1] if len(w) > 1 else np.zeros(len(k), np.float32)
        if isinstance(old, L.DepthwiseConv2D):
            kernel = kernel * k[None, None, :, None]
        else:
            kernel = kernel * k
        layer.set_weights([kernel.astype(np.float32), ((bias - bn.moving_mean.numpy()) * k + beta).astype(np.float32)])
    dropped: dict[str, int] = {}
    kept: dict[str, np.ndarray] = {}
    if drop_dead:
        from tinyq.prune import drop_dead_channels

        folded, dropped, kept = drop_dead_channels(folded)
    return Folded(folded, dropped, factors, kept)
