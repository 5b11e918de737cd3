"""Import TensorFlow with the legacy Keras (tf_keras) that TFMOT needs.

TFMOT works only with tf-keras; TensorFlow picks its Keras at import time from
``TF_USE_LEGACY_KERAS``, so every tinyq module imports TensorFlow from here.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import warnings  # noqa: E402


def _import_quietly():
    """Import TensorFlow with its C++ start-up chatter (CUDA probing, absl) kept off stderr."""
    from tinyq.logs import captured_fd2

    with captured_fd2():
        import tensorflow
        import tensorflow_model_optimization
        import tf_keras
    return tensorflow, tf_keras, tensorflow_model_optimization


tf, keras, tfmot = _import_quietly()
tf.get_logger().setLevel("ERROR")
# Dropout draws from a tf.random.Generator, whose state is a variable in the model's checkpoint,
# so a resumed run drops what the uninterrupted run drops (legacy stateful ops restart their stream)
keras.backend.experimental.enable_tf_random_generator()
# tf_keras warns on every .h5 save; HDF5 is the format TFMOT's wrappers round-trip through.
warnings.filterwarnings("ignore", message="You are saving your model as an HDF5 file")

__all__ = ["tf", "keras", "tfmot"]
