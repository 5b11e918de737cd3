"""tf.data pipelines: uint8 images -> float model input, with training augmentation."""
from __future__ import annotations

import functools

import numpy as np

from tinyq._tf import tf
from tinyq.contract import InputContract


def augment(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Flip, shift/zoom by up to 12%, brightness and contrast; ``x`` float in [0, 1], stateless."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    x = tf.image.stateless_random_flip_left_right(x, seeds[0])
    size = tf.shape(x)[0]
    zoom = tf.random.stateless_uniform([], seeds[1], 0.88, 1.0)
    crop = tf.cast(tf.cast(size, tf.float32) * zoom, tf.int32)
    x = tf.image.stateless_random_crop(x, [crop, crop, tf.shape(x)[2]], seeds[2])
    x = tf.image.resize(x, [size, size])
    x = tf.image.stateless_random_brightness(x, 0.12, seeds[3])
    x = tf.image.stateless_random_contrast(x, 0.85, 1.15, seeds[3][::-1])
    return tf.clip_by_value(x, 0.0, 1.0)


def to_model_range(ds: tf.data.Dataset, contract: InputContract) -> tf.data.Dataset:
    lo, hi = contract.value_range
    return ds.map(lambda a, b: (a * (hi - lo) + lo, b))


def dataset(x: np.ndarray, y: np.ndarray | None, contract: InputContract, batch: int = 64) -> tf.data.Dataset:
    """Batches of model-ready floats, in order, not augmented (evaluation, prediction)."""
    ds = tf.data.Dataset.from_tensor_slices((x, y if y is not None else np.zeros(len(x), np.int32)))
    ds = ds.map(lambda a, b: (tf.cast(a, tf.float32) / 255.0, b))
    return to_model_range(ds, contract).batch(batch).prefetch(tf.data.AUTOTUNE)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def training_batches(x: np.ndarray, y: np.ndarray, contract: InputContract, batch: int, seed: int, epochs: int,
                     initial_epoch: int = 0) -> tf.data.Dataset:
    """Shuffled, augmented batches of the images ``x`` in memory (:func:`epoch_batches`)."""
    images = tf.data.Dataset.from_tensor_slices((x, y))
    return epoch_batches(lambda s: images.shuffle(len(x), seed=s, reshuffle_each_iteration=False), contract, batch,
                         seed, epochs, initial_epoch)


def epoch_batches(shuffled, contract: InputContract, batch: int, seed: int, epochs: int,
                  initial_epoch: int = 0) -> tf.data.Dataset:
    """Augmented batches of epochs ``initial_epoch .. epochs - 1``, one after the other; ``shuffled(s)`` gives
    an epoch's ``(uint8 image, label)`` elements in the order drawn from the seed ``s``.

    Epoch ``e``'s order and augmentation are drawn from ``(seed, e)`` alone, so a run resumed at
    epoch ``e`` sees the batches an uninterrupted run sees there (a reshuffling dataset restarts
    at epoch 0's order in a new process). Batches never straddle epochs: fit it with
    ``steps_per_epoch = ceil(len(x) / batch)``, so one iterator runs through all epochs.
    """
    def one_epoch(epoch: int) -> tf.data.Dataset:
        s = epoch_seed(seed, epoch)
        ds = shuffled(s).enumerate()
        ds = ds.map(lambda i, xy: (augment(tf.cast(xy[0], tf.float32) / 255.0, tf.stack([tf.constant(s, tf.int64), i])),
                                   xy[1]), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return to_model_range(ds, contract).batch(batch)

    epochs_data = [one_epoch(e) for e in range(initial_epoch, epochs)]
    return functools.reduce(tf.data.Dataset.concatenate, epochs_data).prefetch(tf.data.AUTOTUNE)
