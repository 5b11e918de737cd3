"""Drop dead channels: outputs of a Conv2D that are zero for every input, and what only they feed.

A channel ``c`` of a (BN-folded) Conv2D is dead when its weights are zero (``max |w_c| <
DEAD_WEIGHT``, as BN folding leaves channels whose ``gamma`` trained to zero) and the ReLU after
it maps its bias to 0: the channel is 0 on every image. Removing it changes no output:

- a Conv2D reading it loses that input channel (a zero channel adds nothing, padding included);
- a DepthwiseConv2D reading it outputs its bias ``d_c`` there (zero in, zero padded): that
  channel goes too, and its constant ``u_c = relu(d_c)`` is folded into the bias of the 1x1
  Conv2D (``b += u_c W[c]``) or of the Dense after a global pooling (``b += u_c W[c]``) it feeds;
- a global pooling (or a pooling to 1x1 and a Flatten) then a Dense: the Dense loses that row.

Dead channels whose ReLU passes a positive bias are kept: a depthwise conv's zero padding
makes their constant non-constant at the borders. Why: pretrained MobileNets can have most
output channels of their deep pointwise layers dead; their weights, biases, scales and the next
layers' inputs are file bytes that compute nothing.
"""
from __future__ import annotations

import numpy as np

from tinyq._tf import keras

L = keras.layers
DEAD_WEIGHT = 1e-6
_PASS = ("Dropout", "Flatten")


def _relu_of(lc: dict | None):
    """The function of a ReLU-like layer config (relu, relu6, ReLU with default slope), or None."""
    if lc is None:
        return None
    if lc["class_name"] == "Activation" and lc["config"]["activation"] in ("relu", "relu6"):
        top = 6.0 if lc["config"]["activation"] == "relu6" else np.inf
        return lambda v: np.clip(v, 0.0, top)
    c = lc["config"]
    if lc["class_name"] == "ReLU" and not c.get("negative_slope") and not c.get("threshold"):
        top = np.inf if c.get("max_value") is None else float(c["max_value"])
        return lambda v: np.clip(v, 0.0, top)
    return None


def _output_shape(layer) -> tuple | None:
    """The layer's output shape; None for a layer shared by calls whose shapes differ."""
    try:
        return layer.output_shape
    except AttributeError:
        return None


def drop_dead_channels(model: keras.Model) -> tuple[keras.Model, dict[str, int], dict[str, np.ndarray]]:
    """``model`` (functional, BN folded) without its dead channels, how many each Conv2D lost, and
    the channels kept of each layer that lost some (indices into its old per-channel axis: a
    Conv2D's outputs, a DepthwiseConv2D's channels), to carry per-channel values across."""
    config = model.get_config()
    by_name = {lc["name"]: lc for lc in config["layers"]}
    consumers: dict[str, list[str]] = {n: [] for n in by_name}
    for lc in config["layers"]:
        for node in lc["inbound_nodes"]:
            for inbound in node:
                consumers[inbound[0]].append(lc["name"])
    outputs = {o[0] for o in config["output_layers"]}
    weights = {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.layers}
    shapes = {layer.name: _output_shape(layer) for layer in model.layers}

    def sole(name: str) -> dict | None:
        nxt = consumers[name]
        return by_name[nxt[0]] if len(nxt) == 1 and name not in outputs else None

    def after_relu(name: str):
        """(relu function, the layer after it) for the chain ``name -> ReLU -> next``."""
        act = sole(name)
        relu = _relu_of(act)
        return (relu, sole(act["name"])) if relu is not None else (None, None)

    def dense_after_pool(lc: dict | None) -> str | None:
        """The Dense reached from a global pooling (or a pooling to 1x1) through Dropout / Flatten."""
        if lc is None or not (lc["class_name"].startswith("Global") or (
                lc["class_name"].endswith("Pooling2D") and tuple((shapes[lc["name"]] or ())[1:3]) == (1, 1))):
            return None
        nxt = sole(lc["name"])
        while nxt is not None and nxt["class_name"] in _PASS:
            nxt = sole(nxt["name"])
        return nxt["name"] if nxt is not None and nxt["class_name"] == "Dense" else None

    def drop_input(name: str, dead: np.ndarray, constant: np.ndarray | None = None) -> None:
        """Remove input channels ``dead`` of Conv2D / Dense ``name``, folding ``constant`` inputs into its bias."""
        w = weights[name]
        kernel = w[0]
        if constant is not None and np.any(constant):
            if len(w) == 1:  # no bias yet: one is needed for the folded constant
                by_name[name]["config"]["use_bias"] = True
                w.append(np.zeros(kernel.shape[-1], np.float32))
            rows = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1])[0]  # 1x1 conv or Dense: [in, out]
            w[1] = w[1] + (constant[:, None] * rows[dead]).sum(0)
        w[0] = np.delete(kernel, dead, axis=-2)

    dropped: dict[str, int] = {}
    kept: dict[str, np.ndarray] = {}
    for lc in config["layers"]:
        name = lc["name"]
        if lc["class_name"] != "Conv2D" or len(weights[name]) < 2:
            continue
        relu, nxt = after_relu(name)
        if relu is None or nxt is None:
            continue
        kernel, bias = weights[name]
        silent = (np.abs(kernel).reshape(-1, kernel.shape[-1]).max(0) < DEAD_WEIGHT) & (relu(bias) == 0)
        dead = np.flatnonzero(silent)
        if len(dead) == len(bias):
            dead = dead[1:]  # keep one channel: the graph needs a tensor
        if not len(dead):
            continue
        if nxt["class_name"] == "Conv2D":
            drop_input(nxt["name"], dead)
        elif (dense := dense_after_pool(nxt)) is not None:
            drop_input(dense, dead)
        elif nxt["class_name"] == "DepthwiseConv2D" and nxt["config"].get("depth_multiplier", 1) == 1:
            dw = weights[nxt["name"]]
            relu2, last = after_relu(nxt["name"])
            if relu2 is None or last is None:
                continue
            d = dw[1][dead] if len(dw) > 1 else np.zeros(len(dead), np.float32)
            if last["class_name"] == "Conv2D" and tuple(last["config"]["kernel_size"]) == (1, 1):
                drop_input(last["name"], dead, relu2(d))
            elif (dense := dense_after_pool(last)) is not None:
                drop_input(dense, dead, relu2(d))
            else:
                continue
            kept[nxt["name"]] = np.delete(np.arange(dw[0].shape[2]), dead)
            dw[0] = np.delete(dw[0], dead, axis=2)
            if len(dw) > 1:
                dw[1] = np.delete(dw[1], dead)
        else:
            continue
        kept[name] = np.delete(np.arange(len(bias)), dead)
        weights[name] = [np.delete(kernel, dead, axis=-1), np.delete(bias, dead)]
        lc["config"]["filters"] = len(bias) - len(dead)
        dropped[name] = len(dead)
    if not dropped:
        return model, {}, {}
    pruned = keras.Model.from_config(config)
    for layer in pruned.layers:
        layer.set_weights(weights[layer.name])
    return pruned, dropped, kept
