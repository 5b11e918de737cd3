"""tf.data pipelines: uint8 images -> float model input, with training augmentation."""
from __future__ import annotations

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


def dataset(x: np.ndarray, y: np.ndarray | None, contract: InputContract, batch: int = 64,
            training: bool = False, seed: int = 0, teacher=None) -> tf.data.Dataset:
    """Batches of model-ready floats; shuffled and augmented when ``training``.

    Augmentation runs on [0, 1] pixels, then the contract maps them to the model's range.
    """
    ds = tf.data.Dataset.from_tensor_slices((x, y if y is not None else np.zeros(len(x), np.int32)))
    ds = ds.cache()
    if training:
        ds = ds.shuffle(min(len(x), 8192), seed=seed, reshuffle_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed).batch(2)))
        ds = ds.map(lambda xy, s: (augment(tf.cast(xy[0], tf.float32) / 255.0, s), xy[1]),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(lambda a, b: (tf.cast(a, tf.float32) / 255.0, b))
    lo, hi = contract.value_range
    ds = ds.map(lambda a, b: (a * (hi - lo) + lo, b))
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)
