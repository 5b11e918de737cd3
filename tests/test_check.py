"""`tinyq check`'s account of where Keras and the file disagree."""
import numpy as np

from tinyq.verify import against_keras


def test_against_keras_counts_the_flips_and_how_close_keras_was_to_a_tie():
    keras_prob = np.array([[0.6, 0.4], [0.51, 0.49], [0.2, 0.8]])
    result = against_keras(keras_prob, np.array([0, 1, 1]))  # the second flips, where Keras had 0.51 : 0.49
    assert result["disagreements"] == 1 and abs(result["keras_margin_max"] - 0.02) < 1e-9
    three = np.array([[0.3, 0.45, 0.25], [0.1, 0.2, 0.7]])
    result = against_keras(three, np.array([0, 2]))  # the first flips; Keras's top two there: 0.45, 0.3
    assert result["disagreements"] == 1 and abs(result["keras_margin_max"] - 0.15) < 1e-9
    assert against_keras(three, np.array([1, 2])) == {"agreement_with_keras": 1.0, "disagreements": 0,
                                                       "keras_margin_max": 0.0}


def test_a_model_whose_arena_passes_1mb_is_checked_and_exported(folders, tmp_path):
    """Two 96x96x64 int8 activations live at once need 1.18 MB: TFLM's first arena (1 MB) is too
    small, so check and export try larger ones instead of failing ('TFLM failed to allocate tensors')."""
    from tinyq._tf import keras, tf
    from tinyq.verify import check
    from tinyq.export.bundle import prepare

    L = keras.layers
    keras.utils.set_random_seed(0)
    i = L.Input((96, 96, 3))
    x = L.Conv2D(64, 3, padding="same", activation="relu")(L.Conv2D(64, 3, padding="same", activation="relu")(i))
    model = keras.Model(i, L.Dense(2, activation="softmax")(L.GlobalAveragePooling2D()(x)))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    converter.representative_dataset = lambda: ([rng.random((1, 96, 96, 3), np.float32)] for _ in range(4))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    path = tmp_path / "big.tflite"
    path.write_bytes(converter.convert())

    result = check(path, folders / "labelled", limit=8)
    assert result["tflm"]["arena_bytes"] > 1 << 20 and result["litert_vs_tflm_max_abs_diff"] == 0
    assert prepare(path).arena_measured == result["tflm"]["arena_bytes"]
