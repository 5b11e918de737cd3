"""Experiments on the uniform 2-bit gap (issue 4, ninth measurement in docs/benchmarks.md): not tinyq features.

Each run is ``tinyq quantize MODEL --bits 2 --method ste --unlabeled --epochs 3 --seed S`` on
``--data``, with at most one change, then ``tinyq check`` on ``--vww`` in TFLM:

- ``--equalize P``: cross-layer equalization of every depthwise -> ReLU -> pointwise pair of
  the BN-folded float model before QAT (Nagel et al. 2019, arXiv 1906.04721). The pointwise
  kernel's input column ``j`` is multiplied by ``a_j = (r_x_j / r_w_j) ** P`` and the
  depthwise channel ``j`` (kernel and bias) divided by it; ``r_x_j`` is the ReLU output's
  largest value on 512 training images, ``r_w_j`` the column's largest ``|w|``; the ``a`` of a
  layer are divided by their geometric mean. Exact in float (ReLU(z / a) = ReLU(z) / a);
  it only changes what the per-output-channel 2-bit grid sees.
- ``--freeze F``: oscillation freezing (Nagel et al. 2022, arXiv 2203.11086). After every
  step, per 2-bit weight: its grid code, whether it moved opposite to its previous move (an
  oscillation), ``f = EMA(oscillation)`` and ``EMA(code)`` with momentum 0.01; a weight with
  ``f > F`` is frozen at ``round(EMA(code))``, its latent weight set to that level each step.
  With ``F = 0`` the statistics are only recorded (``RUN/oscillations.json``).
- ``--global-pool``: ``AveragePooling2D`` over the whole map + ``Flatten`` replaced by
  ``GlobalAveragePooling2D`` (the file gets MEAN, which requantizes once, instead of
  AVERAGE_POOL_2D + QUANTIZE, which round twice).

    python experiments/try_uniform2.py --model ../shared/models/vww_96.h5 --data ../shared/data/people96 \\
        --vww ../shared/data/vww-dev --seed 0 --freeze 0.02 --out try2/freeze-s0

Prints one line: the change, the seed, vww-dev accuracy in TFLM, Keras/TFLM disagreements.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from tinyq._tf import keras, tf
from tinyq.verify import check
from tinyq.data import load_splits
from tinyq.fold import fold_batchnorm
from tinyq.qat import load_model, quantized_layers
from tinyq.pipeline.quantize import QuantizeJob, quantize
from tinyq.graph import contract_of
from tinyq.quantizers.base import channels_last

L = keras.layers


def equalized(model: keras.Model, data: str, power: float) -> keras.Model:
    """``model`` BN-folded, each depthwise -> ReLU -> 1x1 conv pair rescaled per channel (float-exact)."""
    m = fold_batchnorm(model)
    contract = contract_of(m, (0.0, 1.0), None)
    x = load_splits(data, contract.resolution, contract.channels, 0)["train"].x
    x = contract.to_float(x[np.random.default_rng(0).permutation(len(x))[:512]])
    pairs = [(dw, act, pw) for dw, act, pw in zip(m.layers, m.layers[1:], m.layers[2:])
             if isinstance(dw, L.DepthwiseConv2D) and isinstance(act, L.Activation)
             and isinstance(pw, L.Conv2D) and pw.kernel_size == (1, 1)]
    acts = keras.Model(m.input, [act.output for _, act, _ in pairs]).predict(x, batch_size=128, verbose=0)
    for (dw, _, pw), y in zip(pairs, acts):
        r_x = y.reshape(-1, y.shape[-1]).max(axis=0)
        (k, b), (w, wb) = dw.get_weights(), pw.get_weights()
        r_w = np.abs(w[0, 0]).max(axis=1)
        live = (r_x > 1e-8) & (r_w > 1e-8)
        a = np.ones_like(r_x)
        a[live] = (r_x[live] / r_w[live]) ** power
        a[live] /= np.exp(np.log(a[live]).mean())
        dw.set_weights([k / a[None, None, :, None], b / a])
        pw.set_weights([w * a[None, None, :, None], wb])
    return m


def global_pooled(model: keras.Model) -> keras.Model:
    """``model`` with AveragePooling2D + Flatten replaced by GlobalAveragePooling2D (a chain model)."""
    h, layers, i = model.input, model.layers[1:], 0
    while i < len(layers):
        if isinstance(layers[i], L.AveragePooling2D) and i + 1 < len(layers) and isinstance(layers[i + 1], L.Flatten):
            h, i = L.GlobalAveragePooling2D(name="global_average_pooling2d")(h), i + 2
        else:
            h, i = layers[i](h), i + 1
    return keras.Model(model.input, h)


class Oscillations(keras.callbacks.Callback):
    """Per 2-bit weight: oscillation frequency and code EMA; freezes above ``threshold`` (0: record only)."""

    def __init__(self, path: Path, threshold: float, momentum: float = 0.01) -> None:
        super().__init__()
        self.path, self.threshold, self.m = path, threshold, momentum
        self.items, self.log, self.steps = [], [], 0

    def on_train_begin(self, logs=None) -> None:
        qat = getattr(self.model, "student", self.model)  # QAT fits a Distiller around the model
        for _, weight, q, qvars in quantized_layers(qat):
            if q.bits == 2:
                it = {"w": weight, "s": qvars["scale"], "axis": q.kernel_axis,
                      "g": q.grid}
                c = self.codes(it)
                it.update(prev=c, dir=np.zeros_like(c), f=np.zeros(c.shape), ema=c.astype(float),
                          frozen=np.zeros(c.shape, bool), fcode=c.copy())
                self.items.append(it)

    def latent(self, it) -> np.ndarray:
        return channels_last(tf.convert_to_tensor(it["w"]), it["axis"]).numpy()

    def codes(self, it) -> np.ndarray:
        g = it["g"]
        return np.clip(np.round(self.latent(it) / (np.abs(it["s"].numpy()) + 1e-12) - g.offset), g.lo, g.hi).astype(np.int8)

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.steps += 1
        moved = osc = frozen = n = 0
        for it in self.items:
            c = self.codes(it)
            d = np.sign(c.astype(np.int16) - it["prev"]).astype(np.int8)
            o = (d != 0) & (d == -it["dir"])
            it["dir"] = np.where(d != 0, d, it["dir"])
            it["f"] = (1 - self.m) * it["f"] + self.m * o
            it["ema"] = (1 - self.m) * it["ema"] + self.m * c
            if self.threshold > 0:
                new = (it["f"] > self.threshold) & ~it["frozen"]
                it["fcode"] = np.where(new, np.clip(np.round(it["ema"]), it["g"].lo, it["g"].hi), it["fcode"]).astype(np.int8)
                it["frozen"] |= new
                if it["frozen"].any():
                    s = np.abs(it["s"].numpy()) + 1e-12
                    w = np.where(it["frozen"], (it["fcode"] + it["g"].offset) * s, self.latent(it)).astype(np.float32)
                    it["w"].assign(channels_last(tf.constant(w), it["axis"]))
                    c = np.where(it["frozen"], it["fcode"], c)
            it["prev"] = c
            moved, osc, frozen, n = moved + int((d != 0).sum()), osc + int(o.sum()), frozen + int(it["frozen"].sum()), n + c.size
        if self.steps % 50 == 0:
            self.log.append({"step": self.steps, "moved": moved, "oscillated": osc, "frozen": frozen, "weights": n})
            self.path.write_text(json.dumps(self.log) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--vww", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", required=True)
    change = p.add_mutually_exclusive_group()
    change.add_argument("--equalize", type=float, metavar="P")
    change.add_argument("--freeze", type=float, metavar="F")
    change.add_argument("--global-pool", action="store_true")
    args = p.parse_args()
    for path in (args.model, args.data, args.vww):
        if not Path(path).exists():
            sys.exit(f"skipped: {path} is absent (this benchmark needs ../shared)")
    out = Path(args.out)
    model = args.model
    with tempfile.TemporaryDirectory() as tmp:
        if args.equalize is not None or args.global_pool:
            m = load_model(args.model)
            m = equalized(m, args.data, args.equalize) if args.equalize is not None else global_pooled(m)
            model = os.path.join(tmp, "model.h5")
            m.save(model)
        callbacks = [] if args.freeze is None else [Oscillations(out.with_suffix(".oscillations.json"), args.freeze)]
        job = QuantizeJob(model=model, data=args.data, bits=2, method="ste", unlabeled=True, epochs=args.epochs,
                          seed=args.seed)
        quantize(job, out, callbacks=callbacks)
    r = check(out / "model.tflite", args.vww)
    what = ("equalize %g" % args.equalize if args.equalize is not None else "freeze %g" % args.freeze
            if args.freeze is not None else "global pool" if args.global_pool else "baseline")
    print(f"{what}\tseed {args.seed}\tvww-dev TFLM {r['tflm']['accuracy']:.4f}\t"
          f"Keras/TFLM disagreements {r['tflm'].get('disagreements')} of {r['n']}")


if __name__ == "__main__":
    main()
