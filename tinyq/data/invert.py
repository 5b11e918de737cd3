"""Data from the model itself: images whose activation statistics match its batch-norm layers.

A trained network's BatchNormalization layers remember the mean and variance of their inputs
over the training set. Images optimised so that every BN layer sees those statistics again,
and so that the classifier gives a chosen class, stand in for the training data when
quantizing (ZeroQ, Cai et al. 2020; DeepInversion, Yin et al. 2020; Sony's MCT ships such a
generator). For a batch of images x and BN layer l with running mean mu_l and variance s2_l:

    L(x) = sum_l ( ||mean(h_l) - mu_l||_2 + ||std(h_l) - sqrt(s2_l)||_2 ) / C_l^0.5
           + a * CE(f(x), target) + b * TV(x)

with h_l the input of BN layer l over the batch and its positions, C_l its channels, and the
targets balanced over the classes. Random shifts and flips each step keep the images from
fitting one alignment (DeepInversion's jitter). Adam on the pixels in the model's value
range, clipped to it; the result is rounded to uint8 pixels, as a camera would give.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Callable

import numpy as np

from tinyq.data.folder import ImageSet
from tinyq.errors import TinyqError
from tinyq.runfolder import write_bytes


def bn_layers(model) -> list:
    """The model's BatchNormalization layers (with moving statistics), in graph order."""
    from tinyq._tf import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def can_invert(model) -> bool:
    """Whether ``model`` has batch-norm statistics to invert."""
    return len(bn_layers(model)) > 0


def _smooth_noise(rng, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """A start in 0..1: coarse colour blobs plus fine grain, closer to a photo than white noise."""
    from PIL import Image

    h, w, c = shape
    coarse = rng.normal(0.5, 0.25, (n, 6, 6, c)).clip(0, 1)
    up = np.stack([np.stack([np.asarray(Image.fromarray(img[..., k].astype(np.float32)).resize((w, h), Image.BICUBIC))
                             for k in range(c)], -1) for img in coarse])
    return (up + rng.normal(0, 0.05, up.shape)).clip(0, 1).astype(np.float32)


def invert(model, n: int, value_range: tuple[float, float] = (0.0, 1.0), *, seed: int = 0, steps: int = 100,
           batch: int = 64, lr: float = 0.05, class_weight: float = 1.0, tv_weight: float = 20.0, jitter: int = 4,
           progress: Callable[[int, int], None] | None = None) -> ImageSet:
    """``n`` uint8 images made from ``model``'s BN statistics (module docstring); labels are the targets.

    ``progress(done, total)`` is called after each batch with images done so far.
    """
    from tinyq._tf import keras, tf

    bns = bn_layers(model)
    if not bns:
        raise ValueError("the model has no BatchNormalization layer to invert")
    probe = keras.Model(model.inputs, [layer.input for layer in bns] + [model.output])
    means = [tf.constant(layer.moving_mean.numpy()) for layer in bns]
    stds = [tf.constant(np.sqrt(layer.moving_variance.numpy() + layer.epsilon)) for layer in bns]
    weights = [1.0 / np.sqrt(float(m.shape[0])) for m in means]
    shape = tuple(int(d) for d in model.input_shape[1:])
    classes = int(model.output_shape[-1])
    lo, hi = (float(v) for v in value_range)
    rng = np.random.default_rng(seed)
    tf_seed = int(rng.integers(2 ** 31))

    x = tf.Variable(tf.zeros((batch, *shape)))
    m1 = tf.Variable(tf.zeros_like(x))
    m2 = tf.Variable(tf.zeros_like(x))
    b1, b2 = 0.9, 0.999

    @tf.function
    def step(target, t):
        # shift and flip the whole batch: a view the statistics must hold under
        dx = tf.random.stateless_uniform((2,), (tf_seed, t), -jitter, jitter + 1, dtype=tf.int32)
        with tf.GradientTape() as tape:
            view = tf.roll(x, shift=dx, axis=(1, 2))
            view = tf.cond(dx[0] % 2 == 0, lambda: tf.reverse(view, axis=[2]), lambda: view)
            *feats, probs = probe(view, training=False)
            bn_loss = 0.0
            for h, mu, sd, w in zip(feats, means, stds, weights):
                mean, var = tf.nn.moments(h, axes=list(range(len(h.shape) - 1)))
                bn_loss += w * (tf.norm(mean - mu) + tf.norm(tf.sqrt(var + 1e-5) - sd))
            ce = -tf.reduce_mean(tf.math.log(tf.gather(probs, target, batch_dims=1) + 1e-8))
            tv = tf.reduce_mean(tf.abs(x[:, 1:] - x[:, :-1])) + tf.reduce_mean(tf.abs(x[:, :, 1:] - x[:, :, :-1]))
            loss = bn_loss + class_weight * ce + tv_weight * tv / (hi - lo)
        g = tape.gradient(loss, x)
        # Adam with a cosine-decayed step, written out so one traced step serves every batch
        k = tf.cast(t % steps, tf.float32) + 1.0
        rate = lr * (hi - lo) * 0.5 * (1.0 + tf.cos(np.pi * (k - 1.0) / steps))
        m1.assign(b1 * m1 + (1 - b1) * g)
        m2.assign(b2 * m2 + (1 - b2) * g * g)
        update = (m1 / (1 - b1 ** k)) / (tf.sqrt(m2 / (1 - b2 ** k)) + 1e-8)
        x.assign(tf.clip_by_value(x - rate * update, lo, hi))
        return loss

    images, labels = [], []
    for start in range(0, n, batch):
        m = min(batch, n - start)
        target = (np.arange(start, start + batch) % classes).astype(np.int32)
        x.assign(lo + (hi - lo) * _smooth_noise(rng, batch, shape))
        m1.assign(tf.zeros_like(x))
        m2.assign(tf.zeros_like(x))
        for t in range(steps):
            step(tf.constant(target), tf.constant(start // batch * steps + t, tf.int64))
        pixels = np.rint((x.numpy()[:m] - lo) / (hi - lo) * 255.0).clip(0, 255).astype(np.uint8)
        images.append(pixels)
        labels.append(target[:m])
        if progress is not None:
            progress(start + m, n)
    x_all, y_all = np.concatenate(images), np.concatenate(labels)
    order = rng.permutation(len(y_all))
    return ImageSet(x_all[order], y_all[order], [], source=f"generated from the model's BN statistics (seed {seed})")


GENERATOR_VERSION = 1  # bump when invert() changes what it makes: cached sets are keyed by it


def fingerprint(model) -> str:
    """A digest of ``model``'s architecture and weights: generated sets are cached under it."""
    h = hashlib.sha256(model.to_json().encode())
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:20]


def generated_splits(model, n: int, value_range: tuple[float, float], seed: int, cache: Path | None = None,
                     progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, ImageSet], bool]:
    """train (80%), val and test (10% each) of :func:`invert`'s images, and whether they came from ``cache``.

    ``cache`` is a folder; the set is stored there as ``.npz`` keyed by the model, ``n``, the
    value range, ``seed`` and the generator's version, so a second run skips the optimisation.
    """
    key = f"{fingerprint(model)}-n{n}-s{seed}-r{value_range[0]:g},{value_range[1]:g}-v{GENERATOR_VERSION}"
    path = cache / f"{key}.npz" if cache is not None else None
    hit = False
    if path is not None and path.exists():
        try:
            with np.load(path) as f:
                images = ImageSet(f["x"], f["y"], [], source=str(f["source"]))
            hit = images.x.shape[0] == n
        except Exception:  # noqa: BLE001 - any damage to a cache entry (a cut zip, a foreign file): make it again
            hit = False
    if not hit:
        images = invert(model, n, value_range, seed=seed, progress=progress)
        if path is not None:
            buf = io.BytesIO()
            np.savez(buf, x=images.x, y=images.y, source=images.source)
            try:
                write_bytes(path, buf.getvalue())
            except TinyqError:
                pass  # a cache that cannot be written costs the next run time, not this one its result
    n_eval = max(n // 10, 2)
    parts = {"train": slice(0, n - 2 * n_eval), "val": slice(n - 2 * n_eval, n - n_eval), "test": slice(n - n_eval, n)}
    return {name: ImageSet(images.x[s], images.y[s], [], source=images.source) for name, s in parts.items()}, hit
