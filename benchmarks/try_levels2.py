"""Experiment on the uniform 2-bit gap (issue 4, thirteenth measurement): not a tinyq feature.

A 2-bit layer's four levels need not be evenly spaced: TFLM's DECODE expands 2-bit indices
through a value table, so any four int8 values cost the same bytes, and one table serves a
whole tensor when every channel uses the same four integers (``tinyq.convert.lut``). This
run gives each 2-bit layer one learned inner level ``r`` (in units of the channel's scale):

    Q(w) = s * sign(w) * (1.5 if |w| / s >= (1.5 + r) / 2 else r)

against ste's ``r = 0.5`` (levels -1.5, -0.5, 0.5, 1.5; a Gaussian's MSE-best 4 symmetric
levels have ``r / 1.5 = 0.30``, a Laplacian's 0.23, the uniform grid's 0.33). In the int8
container (steps of ``s / 84``) the levels are -126, -k, k, 126 with ``k = round(84 r)``, so
the file holds ``k``, not ``r``: the forward pass uses ``k / 84`` (straight-through for ``r``).
Gradients: straight-through for ``w`` inside the range, LSQ's for ``s``, and
``dQ/dr = s * sign(w)`` over the weights on the inner levels. Start: ``k`` and the per-channel
scales that minimise the layer's squared error (search over ``k`` and clip ratios).

Each run is ``tinyq quantize MODEL --bits 2 --unlabeled --epochs 3 --seed S`` with table (a)'s
settings and this quantizer in place of ste, then ``tinyq check`` on ``--vww`` in TFLM:

    python benchmarks/try_levels2.py --model ../shared/models/vww_96.h5 --data ../shared/data/people96 \\
        --vww ../shared/data/vww-dev --seed 0 --out try-levels/s0 [--fixed]

``--fixed``: the calibrated ``k`` is kept (not trained), to separate the start from learning.
``--uniform-start``: ``k`` starts at 42 (ste's grid) with ste's start scales, and is learned.
Prints one line: seed, vww-dev accuracy in TFLM, Keras/TFLM disagreements, each 2-bit layer's ``k``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tinyq._tf import tf
from tinyq.check import check
from tinyq.qat import load_model, quantized_layers
from tinyq.quantize import QuantizeJob, quantize
from tinyq.quantizers import registry
from tinyq.quantizers.uniform import round_ste, scale_grad, uniform_quantize

OUTER = 1.5
RATIO = 84  # container integers per scale unit at 2 bits (tinyq.quantizers.grid: 1.5 -> 126)


def levels_quantize(w: tf.Tensor, scale: tf.Tensor, inner: tf.Tensor) -> tf.Tensor:
    """``s * sign(w) * (1.5 or r)`` per channel, ``r`` on the container's ``1/84`` steps; see the module docstring."""
    n = 1
    for d in w.shape[:-1]:
        n *= int(d)
    s = scale_grad(scale, 1.0 / (n * 2) ** 0.5)
    u = w / s
    r = tf.clip_by_value(round_ste(inner * RATIO), 1.0, OUTER * RATIO - 1) / RATIO
    a, zero = tf.abs(u), tf.stop_gradient(0.0 * u)
    # Selects between full-size tensors, no casts of booleans: the converter's constant folding
    # skips an op whose result is over 8 KB and over twice its operands (a bool -> float cast, a
    # scalar broadcast), and an unfolded kernel leaves FakeQuantWithMinMaxVarsPerChannel as a flex op.
    magnitude = tf.where(a >= (OUTER + r) / 2, OUTER + zero, r + zero)
    level = tf.where(u >= 0, magnitude, -magnitude)
    # straight-through for w inside the range (and LSQ's -u/s for s); r's gradient is s * sign on the inner levels
    q = level + tf.where(a <= OUTER, u - tf.stop_gradient(u), zero)
    return q * s


def best_start(w: np.ndarray, axis: int) -> tuple[int, np.ndarray]:
    """The inner integer ``k`` and per-channel scales with the least squared error over the layer."""
    wc = np.moveaxis(np.asarray(w, np.float64), axis, -1).reshape(-1, w.shape[axis])
    amax = np.maximum(np.abs(wc).max(axis=0), 1e-8)
    best = (np.inf, 42, amax / OUTER)
    for k in range(8, 100, 2):
        r = k / RATIO
        err_c, s_c = np.full(amax.shape, np.inf), amax / OUTER
        for ratio in np.linspace(1.0, 0.2, 40):
            s = amax * ratio / OUTER
            u = np.abs(wc) / s
            q = np.sign(wc) * np.where(u >= (OUTER + r) / 2, OUTER, r) * s
            err = ((wc - q) ** 2).sum(axis=0)
            better = err < err_c
            err_c, s_c = np.where(better, err, err_c), np.where(better, s, s_c)
        if err_c.sum() < best[0]:
            best = (err_c.sum(), k, s_c)
    return best[1], best[2].astype(np.float32)


class LearnedLevels(registry.UniformSTE):
    """2-bit layers: levels ``+-1.5 s, +-r s`` with ``r`` learned per layer; other widths: ste."""

    name = "lvl"
    train_inner = True
    mse_start = True

    def build_extra(self, tensor_shape, name, layer):
        if self.bits != 2:
            return {}
        return {"inner": layer.add_weight(name=f"{name}_inner", shape=(), trainable=self.train_inner,
                                          initializer=tf.keras.initializers.Constant(0.5))}

    def calibrate(self, w, weights):
        if self.bits != 2 or not self.mse_start:
            return super().calibrate(w, weights)  # ste's start: k = 42 (the uniform grid), MSE-best scales
        k, s = best_start(w, self.kernel_axis)
        weights["inner"].assign(k / RATIO)
        weights["scale"].assign(s)

    def quantize(self, w, scale, weights, training):
        if self.bits != 2:
            return uniform_quantize(w, scale, self.grid)
        return levels_quantize(w, scale, weights["inner"])


class FixedLevels(LearnedLevels):
    train_inner = False


class UniformStart(LearnedLevels):
    mse_start = False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--vww", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    start = p.add_mutually_exclusive_group()
    start.add_argument("--fixed", action="store_true")
    start.add_argument("--uniform-start", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    for path in (args.model, args.data, args.vww):
        if not Path(path).exists():
            sys.exit(f"skipped: {path} is absent (this benchmark needs ../shared)")
    cls = FixedLevels if args.fixed else UniformStart if args.uniform_start else LearnedLevels
    registry.METHODS["lvl"] = registry.Method("lvl", "weights", "try_levels2", "2-bit: learned inner level", cls)
    out = Path(args.out)
    quantize(QuantizeJob(model=args.model, data=args.data, bits=2, method="lvl", unlabeled=True,
                         epochs=args.epochs, seed=args.seed), out)
    qat = load_model(str(out / "model.h5"))
    ks = {layer.layer.name: int(np.clip(np.round(float(v["inner"].numpy()) * RATIO), 1, 125))
          for layer, _, q, v in quantized_layers(qat) if q.bits == 2}
    r = check(out / "model.tflite", args.vww)
    what = "fixed (MSE start)" if args.fixed else "learned, uniform start" if args.uniform_start else "learned, MSE start"
    print(f"{what}\tseed {args.seed}\tvww-dev TFLM {r['tflm']['accuracy']:.4f}\t"
          f"Keras/TFLM disagreements {r['tflm'].get('disagreements')} of {r['n']}\tk {ks}")


if __name__ == "__main__":
    main()
