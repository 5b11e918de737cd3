"""BN folding, QAT on a small model, conversion verified against training's integers."""
import numpy as np
import pytest

from tinyq._tf import keras
from tinyq.contract import InputContract
from tinyq.tflite import flatbuffer
from tinyq.convert.converter import convert, expected_integers, layer_of
from tinyq.errors import TinyqError
from tinyq.plan import default_plan
from tinyq.fold import fold_batchnorm
from tinyq.qat import load_model, quantize_model, quantized_layers
from tinyq.fit import method_callbacks
from tinyq.quantizers import registry
from tinyq.spec import QuantSpec

L = keras.layers
BITS = (2, 4, 8)


def small_model(seed=0, res=24):
    keras.utils.set_random_seed(seed)
    i = L.Input((res, res, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="c1")(i)
    x = L.BatchNormalization(name="c1_bn")(x)
    x = L.ReLU(6.0)(x)
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = L.BatchNormalization(name="dw_bn")(x)
    x = L.ReLU(6.0)(x)
    x = L.Conv2D(16, 1, name="pw")(x)
    x = L.BatchNormalization(name="pw_bn")(x)
    x = L.ReLU(6.0)(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(4, name="d")(x)
    x = L.BatchNormalization(name="d_bn")(x)
    x = L.Dense(2, name="out")(x)
    model = keras.Model(i, L.Softmax()(x))
    rng = np.random.default_rng(seed)
    for layer in model.layers:  # non-trivial BN statistics, so folding is really exercised
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, n), rng.normal(0, 0.3, n), rng.normal(0, 0.3, n),
                               rng.uniform(0.3, 3, n)])
    return model


def data(n=32, res=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, res, res, 3)).astype(np.float32), rng.integers(0, 2, n)


def test_fold_batchnorm_keeps_outputs():
    model = small_model()
    folded = fold_batchnorm(model)
    assert not any(isinstance(l, L.BatchNormalization) for l in folded.layers)
    x, _ = data()
    np.testing.assert_allclose(model.predict(x, verbose=0), folded.predict(x, verbose=0), atol=1e-5)


def test_fold_keeps_bn_that_cannot_fold():
    i = L.Input((8, 8, 3))
    x = L.Conv2D(4, 3, activation="relu")(i)
    x = L.BatchNormalization()(x)  # after a non-linear activation: cannot fold
    model = keras.Model(i, x)
    assert any(isinstance(l, L.BatchNormalization) for l in fold_batchnorm(model).layers)


@pytest.mark.slow
@pytest.mark.parametrize("method", registry.names())
@pytest.mark.parametrize("bits", BITS)
def test_train_convert_verify(method, bits, tmp_path):
    model = small_model()
    act_bits = 4 if registry.get(method).kind == "activations" else 8  # PACT's clip as a MINIMUM op
    plan = default_plan(model, bits, method, keep_8bit=(), act_bits=act_bits)
    qat = quantize_model(model, plan)
    x, y = data()
    qat.compile("adam", "sparse_categorical_crossentropy")
    before = [w.numpy().copy() for w in qat.trainable_weights]
    qat.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=method_callbacks(qat, 2, 2))
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, qat.trainable_weights))

    contract = InputContract(resolution=24)
    pixels = (x * 255).astype(np.uint8)
    tflite = convert(qat, pixels, contract)  # raises if any tensor differs from training's integers
    fb = flatbuffer.parse(tflite)
    ops = set(fb.op_names)
    if bits == 2:
        assert "TFLM_DECODE" in ops
        # every method's 2-bit integers are the grid's -126, -42, 42, 126: one value table (stride 0) serves all channels
        tables = [fb.tensors[op.inputs[1]].data for op in fb.ops if op.name == "TFLM_DECODE"]
        assert tables and all(len(t) == 20 for t in tables)
    types = {fb.tensors[t].type for t in fb.weight_tensors()}
    assert types == ({"INT4"} if bits == 4 else {"UINT8"} if bits == 2 else {"INT8"})  # UINT8: LUT indices

    # the file computes what the Keras model computes in integer arithmetic, to the bit
    from tinyq.runtimes import model_input, tflm_outputs
    from tinyq.integer import IntegerModel

    np.testing.assert_array_equal(IntegerModel(qat).predict(contract.to_float(pixels)),
                                  tflm_outputs(tflite, model_input(fb, pixels, contract)))

    # the Keras model reloads with identical outputs
    qat.save(tmp_path / "m.h5")
    again = load_model(tmp_path / "m.h5")
    np.testing.assert_allclose(qat.predict(x, verbose=0), again.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize("bits", BITS)
def test_tflm_computes_what_keras_does_elementwise(bits):
    """Every activation of a quantized layer in TFLM is Keras's, bar rare one-step ties.

    TFLM requantizes with two roundings; with 2-bit integers stored as -3, -1, 1, 3 that put
    3.3% of this model's outputs a step high, spread to -126, -42, 42, 126 it is 0.1%. INT4
    levels already fill their container (no spread), so 4 bits keep about 1.3% here.
    """
    from tinyq.runtimes import model_input, tflm_outputs

    keras.utils.set_random_seed(0)
    i = L.Input((12, 12, 3))
    x = L.ReLU(6.0)(L.Conv2D(32, 3, padding="same", name="c1")(i))
    x = L.ReLU(6.0)(L.Conv2D(32, 1, name="pw")(x))  # the output is the 1x1 layer's activation
    model = keras.Model(i, x)
    qat = quantize_model(model, default_plan(model, bits, keep_8bit=()))
    xs, _ = data(64, 12)
    qat.compile("adam", "mse")
    qat.fit(xs, np.zeros((64, 12, 12, 32)), epochs=1, batch_size=16, verbose=0)  # activation ranges
    contract = InputContract(resolution=12)
    pixels = (xs * 255).astype(np.uint8)
    tflite = convert(qat, pixels, contract)
    fb = flatbuffer.parse(tflite)
    out = fb.tensors[fb.outputs[0]]
    got = tflm_outputs(tflite, model_input(fb, pixels, contract)).astype(int)
    want = np.round(qat.predict(contract.to_float(pixels), verbose=0) / out.scales[0]).astype(int) + out.zero_points[0]
    assert np.abs(got - want).max() <= 1
    assert (got != want).mean() <= (0.03 if bits == 4 else 0.005)


def test_expected_integers_on_grid():
    qat = quantize_model(small_model(), default_plan(small_model(), 2, keep_8bit=()))
    for name, (ints, step, bits) in expected_integers(qat).items():
        assert set(np.unique(ints)) <= {-126, -42, 42, 126}, name


def test_plan_keeps_first_last_depthwise():
    plan = default_plan(small_model(), 2)
    assert plan["c1"].weight_bits == 8 and plan["out"].weight_bits == 8 and plan["dw"].weight_bits == 8
    assert plan["pw"].weight_bits == 2 and plan["d"].weight_bits == 2


def test_plan_with_unknown_layer_fails():
    with pytest.raises(TinyqError, match="plan names layers"):
        quantize_model(small_model(), {"nope": QuantSpec()})


def test_each_weight_layer_is_quantized():
    qat = quantize_model(small_model(), default_plan(small_model(), 4))
    names = {layer.layer.name for layer, *_ in quantized_layers(qat)}
    assert names == {"c1", "dw", "pw", "d", "out"}


def test_activation_ranges_calibrated_before_training():
    model = small_model()
    x, y = data(64)
    plan = default_plan(model, 8, keep_8bit=())
    plain = quantize_model(model, plan)
    calibrated = quantize_model(model, plan, calibration=x)
    folded = fold_batchnorm(model)
    relu = next(layer for layer in folded.layers if isinstance(layer, L.ReLU))
    relu_out = keras.Model(folded.inputs, relu.output).predict(x, verbose=0)
    wrapper = next(l for l in calibrated.layers if getattr(l, "layer", None) is not None and l.layer.name == relu.name)
    assert wrapper._output_quantizer_vars["max_var"].numpy() == pytest.approx(relu_out.max(), rel=1e-5)
    assert wrapper._output_quantizer_vars["min_var"].numpy() == 0.0
    inp = next(l for l in calibrated.layers if type(l).__name__ == "QuantizeLayer")
    assert inp.quantizer_vars["max_var"].numpy() == pytest.approx(x.max())
    # uncalibrated, TFMOT's input quantizer maps every input to 0 until the first training step
    plain_inp = next(l for l in plain.layers if type(l).__name__ == "QuantizeLayer")
    assert np.abs(plain_inp(x, training=False).numpy()).max() == 0.0
    step = (x.max() - min(0.0, x.min())) / 255
    assert np.abs(inp(x, training=False).numpy() - x).max() <= step / 2 + 1e-6


def test_fused_activations_are_split_out_with_identical_outputs():
    i = L.Input((12, 12, 3))
    x = L.Conv2D(4, 3, activation="relu", name="c")(i)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(i, L.Dense(3, activation="softmax", name="d")(x))
    folded = fold_batchnorm(model)
    assert [l.name for l in folded.layers if isinstance(l, L.Activation)] == ["c_activation", "d_activation"]
    assert folded.get_layer("d").activation is keras.activations.linear
    x, _ = data(8, res=12)
    np.testing.assert_allclose(model.predict(x, verbose=0), folded.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize("bits", [4, 8])
def test_a_collapsed_scale_converts_and_verifies(bits):
    """A channel whose step is under DEAD_STEP (a cpq run once shrank one to 9.9e-8, and dead channels
    kept for their bias start at ~1e-9) computes with exactly 0 in Keras, and the file holds 0 too."""
    model = small_model()
    qat = quantize_model(model, default_plan(model, bits, "ste", keep_8bit=()))
    for layer, kernel, quantizer, qvars in quantized_layers(qat):
        if "dw" in layer.name:
            s = qvars["scale"].numpy()
            s[0] = 9.9e-8
            qvars["scale"].assign(s)
            channel = kernel.numpy()
            channel[..., 0, 0] = np.linspace(-1, 1, channel[..., 0, 0].size).reshape(channel.shape[:2]) * 127 * 9.9e-8
            kernel.assign(channel)
    x, _ = data()
    tflite = convert(qat, (x * 255).astype(np.uint8), InputContract(resolution=24))  # raises if verify disagrees
    ints, step, _ = expected_integers(qat)["dw"]
    assert step[0] < 1e-7 and not ints[..., 0, 0].any() and ints[..., 0, 1:].any()
    fb = flatbuffer.parse(tflite)
    dw = [fb.tensors[i] for i in fb.weight_tensors() if layer_of(fb.tensors[i].name) == "dw"][0]
    assert not flatbuffer.int_values(dw).reshape(dw.shape)[..., 0].any()
    assert "DEPTHWISE_CONV_2D" in flatbuffer.parse(tflite).op_names


def test_a_dead_channel_whose_latent_weights_drift_deploys_as_zero():
    """A dead channel kept for its bias starts at a step of ~1e-9; while training, its latent weights
    may drift (its ReLU passes the bias, so gradients reach them). It must still compute with 0 in
    Keras and hold 0 in the file, so one 2-bit value table keeps serving the tensor (a drifted channel
    once came out of the converter with a fifth integer, 0, and cost its layer per-channel tables)."""
    from tinyq.convert import lut
    from tinyq.convert.converter import to_tflite, verify

    model = small_model()
    qat = quantize_model(model, default_plan(model, 2, "ste", keep_8bit=("first", "last", "depthwise")))
    for layer, kernel, quantizer, qvars in quantized_layers(qat):
        if layer.layer.name == "pw":
            s = qvars["scale"].numpy()
            s[3] = 1e-9
            qvars["scale"].assign(s)
            w = kernel.numpy()
            w[..., 3] = np.random.default_rng(1).normal(0, 1e-3, w[..., 3].shape)
            kernel.assign(w)
            assert not quantizer(kernel, False, qvars).numpy()[..., 3].any()
    x, _ = data()
    raw = to_tflite(qat, (x * 255).astype(np.uint8), InputContract(resolution=24))
    fb = flatbuffer.parse(raw)
    (index,) = [i for i, (name, bits) in verify(qat, fb).items() if name == "pw"]
    values = fb.tensors[index].data.view(np.int8).reshape(fb.tensors[index].shape)
    assert not values[3].any() and values[[0, 1, 2, 4]].any()
    assert lut.shared_levels(values, 0, 2) is not None


@pytest.mark.slow
@pytest.mark.parametrize("method", registry.names())
@pytest.mark.parametrize("bits", BITS)
def test_a_constant_channel_keeps_its_bias_in_the_file(method, bits):
    """A dead channel kept for its bias (zero weights, ReLU passes the bias: a constant) is stored
    with a step its int32 bias fits under (tinyq.convert.constants). Its step used to be its ~1e-9
    scale, so bias / (input scale x step) saturated at 2^31 - 1: vww_96 files computed 0.40 for a
    0.50 constant."""
    model = small_model()
    qat = quantize_model(model, default_plan(model, bits, method, keep_8bit=()))
    for layer, kernel, quantizer, qvars in quantized_layers(qat):
        if layer.layer.name == "pw":
            s = qvars["scale"].numpy()
            s[3] = 1e-9
            qvars["scale"].assign(s)
            kernel.assign(np.where(np.arange(16) == 3, 0.0, kernel.numpy()))
            bias = layer.layer.bias.numpy()
            bias[3] = 2.0
            layer.layer.bias.assign(bias)
    x, _ = data()
    fb = flatbuffer.parse(convert(qat, (x * 255).astype(np.uint8), InputContract(resolution=24)))
    (op,) = [op for i, op in fb.weight_tensors().items() if layer_of(fb.tensors[i].name) == "pw"]
    step = fb.tensors[op.inputs[0]].scales[0] * fb.tensors[op.inputs[1]].scales
    stored = fb.tensors[op.inputs[2]].data.view(np.int32)
    assert abs(stored[3]) < 2 ** 31 - 1
    # the channel computes 2.0 to its output grid's half step (at 2 bits its bias is moved to the middle
    # of that step, tinyq.convert.constants.center_constant_biases; 2.0 is 42.5 steps here, a tie)
    from tinyq.fixedpoint import multiply_by_quantized_multiplier as mbqm
    from tinyq.fixedpoint import quantize_multiplier

    s_out = np.float64(fb.tensors[op.outputs[0]].scales[0])
    q, shift = quantize_multiplier(np.float64(fb.tensors[op.inputs[0]].scales[0])
                                   * np.float64(fb.tensors[op.inputs[1]].scales[3]) / s_out)
    assert abs(mbqm(int(stored[3]), q, shift) * s_out - 2.0) <= s_out / 2 + 1e-6
    if bits != 2:
        assert stored[3] * step[3] == pytest.approx(2.0, rel=1e-4)
    if bits == 2:  # the constant still shares its layer's one value table: a small step, not a large one
        tables = [fb.tensors[op.inputs[1]].data for op in fb.ops if op.name == "TFLM_DECODE"]
        assert tables and all(len(t) == 20 for t in tables)


@pytest.mark.slow
@pytest.mark.parametrize("storage", [None, 4, 8])
def test_a_dead_2bit_channel_stays_dead_in_every_storage(storage):
    """Deadness is judged by the trained grid's container step (scale / 84 at 2 bits), so a wider
    storage (INT4: scale / 4) neither revives the channel nor fails verification."""
    model = small_model()
    qat = quantize_model(model, default_plan(model, 2, "ste", keep_8bit=("first", "last", "depthwise")))
    for layer, kernel, quantizer, qvars in quantized_layers(qat):
        if layer.layer.name == "pw":
            s = qvars["scale"].numpy()
            s[3] = 2e-6  # step 2.4e-8 in the 2-bit container, 5e-7 in INT4
            qvars["scale"].assign(s)
            w = kernel.numpy()
            w[..., 3] = 1e-6
            kernel.assign(w)
    x, _ = data()
    tflite = convert(qat, (x * 255).astype(np.uint8), InputContract(resolution=24), storage_bits=storage)
    fb = flatbuffer.parse(tflite)
    if storage is not None:  # LUT files hold indices; the plain containers hold the integers
        (pw,) = [fb.tensors[i] for i in fb.weight_tensors() if layer_of(fb.tensors[i].name) == "pw"]
        values = flatbuffer.int_values(pw).reshape(pw.shape)
        assert not values[3].any() and values[[0, 1, 2, 4]].any()


@pytest.mark.parametrize("act_bits", [4, 8])
def test_a_whole_map_average_pool_deploys_as_mean(act_bits):
    """vww_96.h5's head, AveragePooling2D over the whole 3x3 map then Flatten, becomes a MEAN: the
    same values in Keras, and the file requantizes the sum instead of averaging on the 4-bit
    activations' grid (AVERAGE_POOL_2D's round(sum(q) / n) put pooled values up to 18 output steps off)."""
    from tinyq.runtimes import model_input, tflm_outputs
    from tinyq.integer import IntegerModel

    keras.utils.set_random_seed(0)
    i = L.Input((12, 12, 3))
    x = L.ReLU(6.0)(L.Conv2D(8, 3, strides=2, padding="same", name="c1")(i))
    x = L.ReLU(6.0)(L.Conv2D(16, 3, strides=2, padding="same", name="c2")(x))
    x = L.Flatten()(L.AveragePooling2D(3, name="pool")(x))
    model = keras.Model(i, L.Dense(2, activation="softmax", name="out")(x))
    folded = fold_batchnorm(model)
    pool = folded.get_layer("pool")
    assert isinstance(pool, L.GlobalAveragePooling2D) and pool.output_shape == (None, 1, 1, 16)
    xs, y = data(32, 12)
    np.testing.assert_allclose(model.predict(xs, verbose=0), folded.predict(xs, verbose=0), atol=1e-6)

    plan = default_plan(model, 4, "pact" if act_bits < 8 else "ste", keep_8bit=(), act_bits=act_bits)
    qat = quantize_model(model, plan, calibration=xs)
    qat.compile("adam", "sparse_categorical_crossentropy")
    qat.fit(xs, y, epochs=1, batch_size=16, verbose=0)
    contract = InputContract(resolution=12)
    pixels = (xs * 255).astype(np.uint8)
    tflite = convert(qat, pixels, contract)
    fb = flatbuffer.parse(tflite)
    assert "MEAN" in fb.op_names and "AVERAGE_POOL_2D" not in fb.op_names
    np.testing.assert_array_equal(IntegerModel(qat).predict(contract.to_float(pixels)),
                                  tflm_outputs(tflite, model_input(fb, pixels, contract)))


def test_an_average_pool_that_is_not_whole_map_stays():
    i = L.Input((12, 12, 3))
    x = L.AveragePooling2D(2)(L.Conv2D(4, 3, padding="same")(i))
    model = keras.Model(i, L.Dense(2)(L.GlobalAveragePooling2D()(x)))
    assert sum(isinstance(l, L.AveragePooling2D) for l in fold_batchnorm(model).layers) == 1


def test_a_shared_pool_is_left_as_is():
    """One AveragePooling2D over a 12x12 and a 24x24 map: whole-map on one input only, and Keras
    has no single input shape for it."""
    i = L.Input((12, 12, 3))
    pool = L.AveragePooling2D(12, name="pool")
    a, b = L.Conv2D(4, 3, padding="same")(i), L.Conv2D(4, 1)(L.UpSampling2D(2)(i))
    model = keras.Model(i, L.Dense(2)(L.Concatenate()([L.Flatten()(pool(a)), L.Flatten()(pool(b))])))
    folded = fold_batchnorm(model)
    assert isinstance(folded.get_layer("pool"), L.AveragePooling2D)
    x, _ = data(4, res=12)
    np.testing.assert_allclose(model.predict(x, verbose=0), folded.predict(x, verbose=0), atol=1e-6)
