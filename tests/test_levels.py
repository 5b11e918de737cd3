"""The ``levels`` method: 2-bit levels -1.5, -r, r, 1.5 per channel scale, r learned per layer."""
import numpy as np
import pytest

from tinyq._tf import tf
from tinyq.errors import TinyqError
from tinyq.quantizers import registry
from tinyq.quantizers.levels import RATIO, best_start, levels_numpy, levels_quantize

S = 0.1
INNER = 20 / RATIO  # int8 levels -126, -20, 20, 126; the inner/outer threshold is (1.5 + 0.238) / 2 = 0.869 steps


def test_forward_golden():
    # u = w / s: 0.1, -0.5, 0.9 -> inner (0.238) by sign, outer from 0.869 steps on, clipped beyond 1.5
    w = tf.constant([[0.01], [-0.05], [0.09], [0.2], [-0.3]])
    got = levels_quantize(w, tf.constant([S]), tf.constant(INNER)).numpy().ravel()
    np.testing.assert_allclose(got, [S * 20 / 84, -S * 20 / 84, 0.15, 0.15, -0.15], rtol=1e-6)


def test_inner_level_is_what_the_int8_container_holds():
    # r = 0.3 is 25.2 container steps: the forward pass computes with 25 / 84, the file's integer
    got = levels_quantize(tf.constant([[0.001]]), tf.constant([S]), tf.constant(0.3)).numpy()
    np.testing.assert_allclose(got, [[S * 25 / 84]], rtol=1e-6)


def test_gradients_against_the_formulas():
    """w: straight through inside the range, 0 beyond; r: s * sign(w) on the inner levels; s: LSQ's
    (Q(w) / s - w / s) inside and +-1.5 beyond, times 1 / sqrt(2 n)."""
    w = tf.Variable([[0.01], [-0.05], [0.09], [0.2], [-0.3]])
    s, r = tf.Variable([S]), tf.Variable(INNER)
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(levels_quantize(w, s, r))
    gw, gs, gr = tape.gradient(y, [w, s, r])
    np.testing.assert_allclose(gw.numpy().ravel(), [1, 1, 1, 0, 0])
    np.testing.assert_allclose(float(gr), S * (1 - 1), atol=1e-7)  # +0.1 and -0.05 on the inner levels cancel
    u = w.numpy().ravel() / S
    q = levels_numpy(w.numpy().ravel(), S, 20) / S
    lsq = np.where(np.abs(u) <= 1.5, q - u, q).sum() / np.sqrt(2 * 5)
    np.testing.assert_allclose(float(gs[0]), lsq, rtol=1e-5)
    with tf.GradientTape() as tape:  # two positive inner weights: dQ/dr = 2 s
        y = tf.reduce_sum(levels_quantize(w[:1] * tf.constant([[1.0]]) + tf.zeros((2, 1)), s, r))
    np.testing.assert_allclose(float(tape.gradient(y, r)), 2 * S, rtol=1e-6)


def test_start_recovers_levels_and_beats_the_uniform_grid_on_heavy_tails():
    rng = np.random.default_rng(0)
    scales = np.array([0.05, 0.2, 1.0])
    on_levels = scales * np.array([-1.5, -30 / 84, 30 / 84, 1.5])[rng.integers(0, 4, (64, 3))]
    k, s = best_start(on_levels, -1)
    assert k == 30
    np.testing.assert_allclose(s, scales, rtol=0.03)
    laplace = rng.laplace(size=(512, 8))
    k, s = best_start(laplace, -1)
    assert k < 42  # heavy tails: the inner levels move in
    err = ((laplace - levels_numpy(laplace, s, k)) ** 2).sum()
    from tinyq.quantizers import grid, mse_scale

    g, s_u = grid(2), mse_scale(laplace, 2)
    uniform = (np.clip(np.round(laplace / s_u - g.offset), g.lo, g.hi) + g.offset) * s_u
    assert err < ((laplace - uniform) ** 2).sum()


def test_qgt_distance_is_zero_on_the_levels_and_grows_between():
    q = registry.parse("qgt+levels").weight_quantizer(2, -1)
    holder = tf.Module()
    holder.add_weight = lambda name, shape, initializer, trainable, dtype=tf.float32: tf.Variable(
        initializer(shape, dtype=dtype), trainable=trainable)
    qvars = q.build(tf.TensorShape((1, 1, 4, 1)), "kernel", holder)
    qvars["inner"].assign(INNER)
    on = tf.constant([[-1.5], [-20 / 84], [20 / 84], [1.5]]) * S
    d = q.distance(on, tf.constant([S]), qvars).numpy()
    np.testing.assert_allclose(d, 0, atol=1e-10)
    half = q.distance(tf.constant([[(20 / 84 + 1.5) / 2 * S]]), tf.constant([S]), qvars).numpy()
    np.testing.assert_allclose(half, ((1.5 - 20 / 84) / 2) ** 2, rtol=1e-5)


@pytest.mark.slow
def test_file_holds_the_learned_levels_and_int4_storage_is_refused():
    """The 2-bit file's one value table is -126, -k, k, 126 with the k training learned; TFLM equals the
    integer model; INT4 storage, which holds only -6, -2, 2, 6, fails with one line."""
    from test_qat import data, small_model
    from tinyq.runtimes import model_input, tflm_outputs
    from tinyq.contract import InputContract
    from tinyq.tflite import flatbuffer
    from tinyq.convert.converter import convert
    from tinyq.integer import IntegerModel
    from tinyq.plan import default_plan
    from tinyq.qat import diagnostics, quantize_model, quantized_layers

    model = small_model()
    qat = quantize_model(model, default_plan(model, 2, "levels", keep_8bit=()))
    for _, _, q, qvars in quantized_layers(qat):
        qvars["inner"].assign(13 / RATIO)  # far from the uniform grid's 42
    x, y = data()
    qat.compile(tf.keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")  # activation ranges only
    qat.fit(x, y, epochs=1, batch_size=16, verbose=0)
    pixels, contract = (x * 255).astype(np.uint8), InputContract(resolution=24)
    tflite = convert(qat, pixels, contract)
    fb = flatbuffer.parse(tflite)
    tables = [fb.tensors[op.inputs[1]].data for op in fb.ops if op.name == "TFLM_DECODE"]
    assert tables and all(sorted(t[-4:].view(np.int8)) == [-126, -13, 13, 126] for t in tables)
    assert {v["inner_level"] for v in diagnostics(qat).values() if "inner_level" in v} == {13.0}
    np.testing.assert_array_equal(IntegerModel(qat).predict(contract.to_float(pixels)),
                                  tflm_outputs(tflite, model_input(fb, pixels, contract)))
    with pytest.raises(TinyqError, match="4-bit storage cannot hold"):
        convert(qat, pixels, contract, storage_bits=4)
    assert len(convert(qat, pixels, contract, storage_bits=8)) > 0


@pytest.mark.slow
def test_weights_on_the_threshold_convert_as_trained():
    """STE training leaves weights on the inner/outer threshold; each must take the same level in
    Keras and in the file (the converter's verify raises otherwise). Every channel holds the
    float32 weights around ``(126 + k) / 168 * s``, both signs."""
    from test_qat import data, small_model
    from tinyq.contract import InputContract
    from tinyq.convert.converter import convert
    from tinyq.plan import default_plan
    from tinyq.qat import quantize_model, quantized_layers

    model = small_model()
    qat = quantize_model(model, default_plan(model, 2, "levels", keep_8bit=()))
    rng = np.random.default_rng(1)
    for layer, kernel, q, qvars in quantized_layers(qat):
        if layer.layer.name != "pw":
            continue
        k = 33
        qvars["inner"].assign(k / RATIO)
        w = kernel.numpy()
        scale = rng.uniform(0.02, 0.2, w.shape[-1]).astype(np.float32)
        qvars["scale"].assign(scale)
        t = ((126 + k) / 168 * scale).astype(np.float32)
        near = np.stack([np.nextafter(t, np.float32(np.inf * d)) if d else t for d in (-1, 0, 1)])
        cells = w.reshape(-1, w.shape[-1])
        cells[:len(near)] = near
        cells[len(near):2 * len(near)] = -near
        kernel.assign(cells.reshape(w.shape))
    x, y = data()
    qat.compile(tf.keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    qat.fit(x, y, epochs=1, batch_size=16, verbose=0)
    convert(qat, (x * 255).astype(np.uint8), InputContract(resolution=24))  # verify raises if any differs
