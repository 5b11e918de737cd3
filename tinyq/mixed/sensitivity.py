"""How much the loss grows when a layer's weights are rounded to b bits, from the loss's curvature.

Chen et al. 2021 (arXiv 2110.06554), second-order estimate per layer ``l`` with ``n_l`` weights:

    dL_l(b) ~ 1/2 * dw_l(b)^T H_l dw_l(b) ~ 1/2 * (tr(H_l) / n_l) * ||Q_b(w_l) - w_l||^2

``tr(H_l)`` is estimated on a few batches of real images, either by Hutchinson's estimator
``E_v[v^T H_l v]`` with Rademacher ``v`` (a Hessian-vector product by double backprop), or by
the Fisher approximation ``E_x[||grad_l log p(y|x)||^2]`` with ``y`` drawn from the model's own
prediction (the true Fisher, which equals the Gauss-Newton matrix for softmax cross-entropy).
The curvature is measured on the BN-folded float model, whose kernels are what gets
quantized; ``Q_b`` is tinyq's starting point for ``b`` bits (per-channel, MSE-searched scale).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tinyq._tf import keras, tf
from tinyq.errors import expected_one_of
from tinyq.fold import fold_batchnorm
from tinyq.graph import WEIGHT_LAYERS, channel_axis, kernel_attr
from tinyq.logs import bar
from tinyq.quantizers import grid, mse_scale

ESTIMATORS = ("hutchinson", "fisher")


def _kernel(layer) -> tf.Variable:
    return getattr(layer, kernel_attr(layer))


def _replicated(fn, xb: tf.Tensor, shape: tuple[int, ...] = ()) -> np.ndarray:
    """``fn(x_part)`` (a mean over ``x_part``, of ``shape``) as its mean over all of ``xb``: on one device as
    it is; under a ``tf.distribute`` strategy (``--distribute``), each replica takes an even share of the batch
    (possibly none) and the means are weighted by the shares (the model's variables are read in replica
    context there)."""
    strategy = tf.distribute.get_strategy()
    n, replicas = int(xb.shape[0]), strategy.num_replicas_in_sync
    if replicas == 1:
        return fn(xb).numpy()
    bounds = np.linspace(0, n, replicas + 1).astype(int)

    def part(context):
        a, b = bounds[context.replica_id_in_sync_group], bounds[context.replica_id_in_sync_group + 1]
        return xb[a:b]

    def weighted(x_part):
        size = int(x_part.shape[0])
        return fn(x_part) * size if size else tf.zeros(shape)

    values = strategy.run(weighted, args=(strategy.experimental_distribute_values_from_function(part),))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None).numpy() / n


def curvature(model: keras.Model, x: np.ndarray, estimator: str = "hutchinson", batch: int = 32,
              samples: int = 1, seed: int = 0) -> dict[str, float]:
    """``tr(H_l) / n_l`` per weight layer of ``model`` (already BN-folded), averaged over ``x``; each batch
    shared among the replicas of a ``tf.distribute`` strategy when one is in scope."""
    if estimator not in ESTIMATORS:
        raise expected_one_of("sensitivity estimator", ESTIMATORS, estimator)
    layers = [layer for layer in model.layers if isinstance(layer, WEIGHT_LAYERS)]
    kernels = [_kernel(layer) for layer in layers]
    rng = np.random.default_rng(seed)
    sums = np.zeros(len(layers))
    count = 0
    shown = bar(len(x), "sensitivity", "image")
    for start in range(0, len(x), batch):
        shown.update(min(batch, len(x) - start))
        xb = tf.constant(x[start:start + batch])
        if estimator == "fisher":
            probs = model(xb, training=False).numpy().astype(np.float64)
            probs /= probs.sum(axis=1, keepdims=True)
            for i in range(len(xb)):  # per-sample gradients: the Fisher is a mean of squared ones
                y = rng.choice(probs.shape[1], p=probs[i])

                def squared_gradients(one, y=y):
                    with tf.GradientTape() as tape:
                        p = model(one, training=False)
                        loss = -tf.math.log(p[0, y] + 1e-12)
                    return tf.stack([tf.reduce_sum(tf.square(g)) for g in tape.gradient(loss, kernels)])

                sums += _replicated(squared_gradients, xb[i:i + 1], (len(kernels),))
                count += 1
        else:
            for _ in range(samples):
                # one layer probed at a time: a joint probe adds the cross-layer blocks v_k^T H_kl v_l,
                # zero in expectation but far larger than tr(H_ll) in one draw
                for li, kernel in enumerate(kernels):
                    v = tf.constant(rng.choice([-1.0, 1.0], size=kernel.shape), kernel.dtype)

                    def probe(xp, kernel=kernel, v=v):  # v^T H v of the mean loss over xp
                        with tf.GradientTape() as outer:
                            with tf.GradientTape() as inner:
                                p = model(xp, training=False)
                                y = tf.stop_gradient(tf.argmax(p, axis=1))
                                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, p))
                            g = inner.gradient(loss, kernel)
                            gv = tf.reduce_sum(g * v)
                        return tf.reduce_sum(v * outer.gradient(gv, kernel))

                    sums[li] += float(_replicated(probe, xb))
                count += 1
    shown.close()
    return {layer.name: float(s / count / int(np.prod(k.shape))) for layer, k, s in zip(layers, kernels, sums)}


def rounding_error(w: np.ndarray, bits: int, channel_axis: int | None) -> float:
    """``||Q_b(w) - w||^2`` with tinyq's starting grid for ``b`` bits."""
    g = grid(bits)
    wc = np.moveaxis(w, channel_axis, -1) if channel_axis is not None else w.reshape(-1, 1)
    s = mse_scale(w, bits, channel_axis)
    q = (np.clip(np.round(wc / s - g.offset), g.lo, g.hi) + g.offset) * s
    return float(((q - wc) ** 2).sum())


def loss_increase(model: keras.Model, x: np.ndarray, bits: Sequence[int] = (2, 4, 8),
                  estimator: str = "hutchinson", **kwargs) -> dict[str, dict]:
    """Per weight layer of ``model`` (float, BN folded here): curvature, weights, channels, ``dL(b)`` per bit width."""
    folded = fold_batchnorm(model)
    trace = curvature(folded, x, estimator, **kwargs)
    out = {}
    for layer in folded.layers:
        if isinstance(layer, WEIGHT_LAYERS):
            w = _kernel(layer).numpy()
            axis = channel_axis(layer)
            out[layer.name] = {
                "curvature": trace[layer.name], "params": int(w.size),
                "channels": 1 if axis is None else int(w.shape[axis]),
                "loss_increase": {b: 0.5 * max(trace[layer.name], 0.0) * rounding_error(w, b, channel_axis(layer))
                                  for b in bits}}
    return out
