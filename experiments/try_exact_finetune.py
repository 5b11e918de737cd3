"""Try: one more epoch of a finished 4-bit-activation run, its forward pass in TFLite's integer arithmetic.

Not a tinyq feature: a measurement (docs/benchmarks.md, twelfth measurement). From a finished
``tinyq quantize`` run, it fine-tunes the QAT model for ``EPOCHS`` more on the run's train
split, distilled (KL, unlabelled) from the run's float model, then saves ``OUT/model.h5`` in a
copy of the run folder (convert it with ``tinyq convert OUT``).

- ``exact``: every int8 tensor of the forward pass is replaced by what the integer kernels
  compute (:class:`tinyq.integer.IntegerModel`, one group of layers at a time: the input
  quantization, then each weight layer with its activation, pool, reshape), and gradients
  flow through the float QAT layers (straight-through: ``h + stop_gradient(h_int - h)``).
  The loss is then the deployed file's, and the model's prediction is TFLM's, bit for bit.
- ``float``: the same epoch with the usual float QAT forward pass: the control.

    python experiments/try_exact_finetune.py RUN OUT exact 5e-5 1
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from tinyq import integer as I
from tinyq._tf import keras, tf
from tinyq.data.folder import load_splits
from tinyq.data.pipeline import training_batches
from tinyq.qat import load_model
from tinyq.graph import contract_of
from tinyq.fit import evaluate_keras


def dequantized(t: I.Tensor) -> tf.Tensor:
    return tf.constant(((t.q - t.zero_point) * np.float64(t.scale)).astype(np.float32))


def groups_of(im: I.IntegerModel, x: np.ndarray) -> list[list]:
    """The integer model's steps, cut after each one that yields an int8 tensor (not an accumulator)."""
    groups, current, t = [], [], im.input_tensor(x)
    for wrapper, handler in im.steps:
        t = handler(im, wrapper, t)
        current.append((wrapper, handler))
        if isinstance(t, I.Tensor):
            groups.append(current)
            current = []
    assert not current, "the model ends in an accumulator"
    return groups


def forward(qat, im: I.IntegerModel, groups: list[list], x: tf.Tensor, training: bool, exact: bool) -> tf.Tensor:
    """The QAT model's output; with ``exact``, each group's output is the integer model's (straight-through).

    The last group (the softmax) stays float: its int8 output would give the loss log(0).
    """
    quantize_input = qat.layers[1]
    assert type(quantize_input).__name__ == "QuantizeLayer"
    h = quantize_input(x, training=training)
    t = im.input_tensor(x.numpy()) if exact else None
    for i, group in enumerate(groups):
        if exact:
            h = h + tf.stop_gradient(dequantized(t) - h)
        for wrapper, _ in group:
            h = wrapper(h, training=training)
        if exact and i < len(groups) - 1:
            for wrapper, handler in group:
                t = handler(im, wrapper, t)
    return h


def main() -> None:
    src, out, mode, lr, epochs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
    exact = mode == "exact"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src, out)
    for name in ("model.tflite", "report.md", "report.json"):
        Path(out, name).unlink(missing_ok=True)
    keras.utils.set_random_seed(0)
    qat = load_model(f"{src}/model.h5")
    teacher = load_model(f"{src}/float.h5")
    contract = contract_of(qat, (0.0, 1.0), None)
    im = I.IntegerModel(qat)
    splits = load_splits(json.loads(Path(src, "config.json").read_text())["train"]["data"],
                         contract.resolution, contract.channels, 0, None)  # the run's images
    xs = contract.to_float(splits["val"].x[:64])
    groups = groups_of(im, xs[:1])
    if exact:  # the forward pass's last int8 input is the integer model's: same top-1
        top1 = forward(qat, im, groups, tf.constant(xs), False, True).numpy().argmax(1)
        print("sanity: top-1 as the integer model's", np.mean(top1 == im(xs).argmax(1)), flush=True)
    train = splits["train"]
    y = evaluate_keras(teacher, train, contract).argmax(1).astype(np.int32)
    batch = 64
    steps = -(-len(train) // batch) * epochs
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps, alpha=0.05))
    t0 = time.time()
    for i, (x, _) in enumerate(training_batches(train.x, y, contract, batch, 7, epochs)):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.kl_divergence(teacher(x, training=False),
                                                             forward(qat, im, groups, x, True, exact)))
            total = loss + tf.add_n(qat.losses) if qat.losses else loss
        variables = qat.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(total, variables), variables))
        if i % 40 == 0:
            print(i, steps, float(loss), f"{time.time() - t0:.0f}s", flush=True)
    qat.save(f"{out}/model.h5")
    print("done", time.time() - t0)


if __name__ == "__main__":
    main()
