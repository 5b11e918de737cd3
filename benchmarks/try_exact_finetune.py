"""Try: one more epoch of a finished 4-bit-activation run, its forward pass in TFLite's integer arithmetic.

Not a tinyq feature: a measurement (docs/benchmarks.md, twelfth measurement). From a finished
``tinyq quantize`` run, it fine-tunes the QAT model for ``EPOCHS`` more on the run's people96
train split, distilled (KL, unlabelled) from the run's float model, then saves ``OUT/model.h5``
in a copy of the run folder (convert it with ``tinyq convert OUT``).

- ``exact``: every int8 tensor of the forward pass is replaced by what the integer kernels
  compute (:class:`tinyq.integer.IntegerModel`, one group of layers at a time: the input
  quantization, then each weight layer with its activation, pool, reshape), and gradients
  flow through the float QAT layers (straight-through: ``h + stop_gradient(h_int - h)``).
  The loss is then the deployed file's, and the model's prediction is TFLM's, bit for bit.
- ``float``: the same epoch with the usual float QAT forward pass: the control.

    python benchmarks/try_exact_finetune.py RUN OUT exact 5e-5 1
"""
import json
import os
import shutil
import sys
import time

import numpy as np

from tinyq._tf import keras, tf
from tinyq.qat import load_model
from tinyq import integer as I
from tinyq.data.pipeline import training_batches
from tinyq.quantize import contract_of
from tinyq.train import evaluate_keras

src, out, mode, lr, epochs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
shutil.rmtree(out, ignore_errors=True); shutil.copytree(src, out)
for f in ("model.tflite", "report.md", "report.json"):
    if os.path.exists(f"{out}/{f}"): os.remove(f"{out}/{f}")
keras.utils.set_random_seed(0)
qat = load_model(f"{src}/model.h5")
teacher = load_model(f"{src}/float.h5")
contract = contract_of(qat, (0.0, 1.0), None)
im = I.IntegerModel(qat)
layers = [l for l in qat.layers if not isinstance(l, I.L.InputLayer)]
qlayer = layers[0]
assert type(qlayer).__name__ == "QuantizeLayer"

class Exact:
    def __init__(self):
        self.meta = None
    def input_int(self, x):
        scale, z, exact = im.input_range
        q = np.clip(np.round(np.asarray(x, np.float64) / np.float64(scale)) + z, -128, 127).astype(np.int64)
        self.t = I.Tensor(q, scale, z, exact)
        return self.t
    def run_group(self, steps):
        def f():
            t = self.t
            for w, h in steps:
                t = h(im, w, t)
            self.t = t
            return ((t.q - t.zero_point) * np.float64(t.scale)).astype(np.float32)
        return f

ex = Exact()
# groups of steps ending in an int8 tensor
groups, cur = [], []
probe = ex.input_int(np.zeros((1, 96, 96, 3), np.float32))
t = probe
for w, h in im.steps:
    t = h(im, w, t); cur.append((w, h))
    if isinstance(t, I.Tensor):
        groups.append(cur); cur = []
assert not cur
last_is_softmax = isinstance(groups[-1][-1][0].layer, I.L.Softmax) or getattr(groups[-1][-1][0].layer, "activation", None).__name__ == "softmax"
print("groups", len(groups), "last softmax", last_is_softmax, flush=True)

def forward(x, training):
    h = qlayer(x, training=training)
    if mode == "exact":
        ex.input_int(x.numpy())
        s, z, _ = im.input_range
        deq = tf.constant(((ex.t.q - z) * np.float64(s)).astype(np.float32))
        h = h + tf.stop_gradient(deq - h)
    for gi, g in enumerate(groups):
        for w, _ in g:
            h = w(h, training=training)
        if mode == "exact" and not (last_is_softmax and gi == len(groups) - 1):
            deq = tf.constant(ex.run_group(g)())
            h = h + tf.stop_gradient(deq - h)
        elif mode == "exact":
            ex.run_group(g)()
    return h

from tinyq.data.folder import load_splits
splits = load_splits(json.load(open(f"{src}/config.json"))["train"]["data"], 96, 3, 0, None)  # the run's images
tr = splits["train"]
y = evaluate_keras(teacher, tr, contract).argmax(1).astype(np.int32)
batch = 64
xs = contract.to_float(splits["val"].x[:64])
if mode == "exact":
    pe = forward(tf.constant(xs), False).numpy()
    logits_int = ex.t.q
    ref = im(xs)
    print("sanity: int8 outputs equal", np.array_equal(logits_int, ref), "argmax eq", np.mean(pe.argmax(1) == ref.argmax(1)), flush=True)
steps = -(-len(tr) // batch) * epochs
ds = training_batches(tr.x, y, contract, batch, 7, epochs)
sched = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps, alpha=0.05)
opt = keras.optimizers.Adam(sched)
t0 = time.time()
for i, (x, _) in enumerate(ds):
    with tf.GradientTape() as tape:
        p_t = teacher(x, training=False)
        p_s = forward(x, True)
        loss = tf.reduce_mean(keras.losses.kl_divergence(p_t, p_s))
        if qat.losses: loss_total = loss + tf.add_n(qat.losses)
        else: loss_total = loss
    v = qat.trainable_variables
    opt.apply_gradients(zip(tape.gradient(loss_total, v), v))
    if i % 40 == 0: print(i, steps, float(loss), f"{time.time()-t0:.0f}s", flush=True)
qat.save(f"{out}/model.h5")
print("done", time.time() - t0)
