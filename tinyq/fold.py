"""Fold batch normalization into the weight layer before it, by rewriting the model config."""
from __future__ import annotations

import copy

import numpy as np

from tinyq._tf import keras

L = keras.layers
WEIGHT_LAYERS = (L.Conv2D, L.DepthwiseConv2D, L.Dense)


def _as_functional(model: keras.Model) -> keras.Model:
    if isinstance(model, keras.Sequential):
        return keras.Model(model.inputs, model.outputs, name=model.name)
    return model


def fold_batchnorm(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with each BatchNormalization folded into the weight layer before it.

    ``w' = w * gamma / sqrt(var + eps)`` per output channel, ``b' = (b - mean) * gamma /
    sqrt(var + eps) + beta``. Folded before QAT (as TFLite folds it at conversion), so the
    grid that training sees is the grid that is deployed. A BN that does not follow a weight
    layer with a linear activation and no other consumer is kept.
    """
    model = _as_functional(model)
    config = copy.deepcopy(model.get_config())
    layers = {layer.name: layer for layer in model.layers}
    consumers: dict[str, int] = {}
    for lc in config["layers"]:
        for node in lc["inbound_nodes"]:
            for inbound in node:
                consumers[inbound[0]] = consumers.get(inbound[0], 0) + 1

    folds: dict[str, str] = {}  # bn name -> weight layer name
    for lc in config["layers"]:
        layer = layers[lc["name"]]
        if not isinstance(layer, L.BatchNormalization) or len(lc["inbound_nodes"]) != 1:
            continue
        src = lc["inbound_nodes"][0][0][0]
        prev = layers[src]
        if (isinstance(prev, WEIGHT_LAYERS) and consumers.get(src) == 1
                and prev.activation is keras.activations.linear
                and layer.axis in ([-1], [len(layer.input_shape) - 1], -1)):
            folds[lc["name"]] = src
    if not folds:
        return _copy(model)

    def rename(ref):
        return folds.get(ref, ref)

    new_layers = []
    for lc in config["layers"]:
        if lc["name"] in folds:
            continue
        if lc["name"] in folds.values():
            lc["config"]["use_bias"] = True
        for node in lc["inbound_nodes"]:
            for inbound in node:
                inbound[0] = rename(inbound[0])
        new_layers.append(lc)
    config["layers"] = new_layers
    config["output_layers"] = [[rename(o[0]), *o[1:]] for o in config["output_layers"]]
    folded = keras.Model.from_config(config)

    by_src = {v: k for k, v in folds.items()}
    for layer in folded.layers:
        old = layers[layer.name]
        if layer.name not in by_src:
            layer.set_weights(old.get_weights())
            continue
        bn = layers[by_src[layer.name]]
        w = old.get_weights()
        kernel = w[0]
        gamma = bn.gamma.numpy() if bn.scale else 1.0
        beta = bn.beta.numpy() if bn.center else 0.0
        k = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
        bias = w[1] if len(w) > 1 else np.zeros(len(k), np.float32)
        if isinstance(old, L.DepthwiseConv2D):
            kernel = kernel * k[None, None, :, None]
        else:
            kernel = kernel * k
        layer.set_weights([kernel.astype(np.float32), ((bias - bn.moving_mean.numpy()) * k + beta).astype(np.float32)])
    return folded


def _copy(model: keras.Model) -> keras.Model:
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone
