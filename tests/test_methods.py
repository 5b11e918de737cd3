"""The paper methods: forward values by hand, gradients against the papers' formulas, combinations."""
import math

import numpy as np
import pytest

from tinyq._tf import keras, tf
from tinyq.errors import TinyqError
from tinyq.quantizers import grid, registry
from tinyq.fit import method_callbacks
from tinyq.quantizers.base import grid_distance
from tinyq.spec import QuantSpec

L = keras.layers


# --- names and combinations -------------------------------------------------------------------

@pytest.mark.parametrize("text, weights, qgt", [("ste", "ste", False), ("qgt", "ste", True),
                                                ("qgt+ste", "ste", True), ("STE+QGT", "ste", True)])
def test_parse_combinations(text, weights, qgt):
    c = registry.parse(text)
    assert (c.weights.name, c.qgt) == (weights, qgt)


@pytest.mark.parametrize("text, message", [("qgt+qgt", "2 regulariser methods"), ("nope", "expected one of"),
                                           ("ste+nope", "got 'nope'")])
def test_nonsensical_combinations_fail_clearly(text, message):
    with pytest.raises(TinyqError, match=message):
        QuantSpec(method=text)


def test_every_method_is_listed_with_its_paper():
    for name, m in registry.METHODS.items():
        assert m.kind in ("weights", "regulariser", "activations") and m.paper and m.quantizes, name


# --- QGT --------------------------------------------------------------------------------------

def test_grid_distance_golden():
    # scale 0.1. 4-bit levels k*0.1 (|k| <= 7); 2-bit levels +-0.05, +-0.15 (top 1.5 steps)
    s = tf.constant([0.1])
    w = tf.constant([[0.0], [0.05], [0.1], [0.025], [0.8]])
    r4 = grid_distance(w, s, grid(4)).numpy().ravel()
    expect4 = [0.0, 1 / math.pi ** 2, 0.0, math.sin(math.pi / 4) ** 2 / math.pi ** 2, ((8 - 7) / 7) ** 2]
    np.testing.assert_allclose(r4, expect4, atol=1e-6)
    w2 = tf.constant([[0.05], [0.0], [0.15], [0.25]])
    r2 = grid_distance(w2, s, grid(2)).numpy().ravel()
    np.testing.assert_allclose(r2, [0.0, 1 / math.pi ** 2, 0.0, ((2.5 - 1.5) / 1.5) ** 2], atol=1e-6)
    # 8 bits (top 127 steps): 40% beyond the clip costs 0.16, as at any width, not 50.8^2 steps^2
    r8 = grid_distance(tf.constant([[1.4 * 127 * 0.1]]), s, grid(8)).numpy().ravel()
    np.testing.assert_allclose(r8, [0.4 ** 2], rtol=1e-5)


def test_grid_distance_gradient_points_to_the_nearest_level():
    # d/dw sin^2(pi (w/s - o)) / pi^2 = sin(2 pi (w/s - o)) / (pi s); no gradient into s
    s = tf.Variable([0.1])
    w = tf.Variable([[0.03], [0.07], [0.12]])
    with tf.GradientTape(persistent=True) as tape:
        r = tf.reduce_sum(grid_distance(w, s, grid(4)))
    g = tape.gradient(r, w).numpy().ravel()
    u = np.array([0.3, 0.7, 1.2])
    np.testing.assert_allclose(g, np.sin(2 * np.pi * u) / (np.pi * 0.1), rtol=1e-4)
    assert g[0] > 0 and g[1] < 0 and g[2] > 0  # toward 0, 0.1 and 0.1: down the distance
    assert tape.gradient(r, s) is None


def _dense_qat(method: str, bits: int):
    from tinyq.plan import default_plan
    from tinyq.qat import quantize_model

    keras.utils.set_random_seed(0)
    i = L.Input((6,))
    model = keras.Model(i, L.Softmax()(L.Dense(3, name="d2")(L.ReLU()(L.Dense(8, name="d1")(i)))))
    return quantize_model(model, default_plan(model, bits, method, keep_8bit=()))


def test_qgt_adds_its_ramped_loss_and_pulls_weights_to_the_grid():
    qat = _dense_qat("qgt", 2)
    x = np.random.default_rng(0).standard_normal((64, 6)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 64)
    qat(x[:2])
    assert float(tf.add_n(qat.losses)) > 0.0  # full lambda without a ramp (a user's plain fit)
    from tinyq.qat import diagnostics

    before = {k: v["grid_distance"] for k, v in diagnostics(qat).items()}
    qat.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    callbacks = method_callbacks(qat, epochs=30, steps=4)
    assert [type(c).__name__ for c in callbacks] == ["WarmupRamp", "QGTRamp"]
    callbacks[1].set_model(qat)
    callbacks[1].on_epoch_begin(0)
    callbacks[1].on_train_batch_begin(0)
    qat(x[:2])
    assert float(tf.add_n(qat.losses)) == 0.0  # the ramp starts at 0
    qat.fit(x, y, epochs=30, batch_size=16, verbose=0, callbacks=callbacks)
    ramps = [v for v in qat.variables if "qgt_ramp" in v.name]
    assert len(ramps) == 2 and all(float(v) == 1.0 for v in ramps)
    assert all(float(v) == 1.0 for v in qat.variables if "quant_ramp" in v.name)
    qat(x[:2])
    assert len(qat.losses) == 2 and float(tf.add_n(qat.losses)) > 0.0
    after = {k: v["grid_distance"] for k, v in diagnostics(qat).items()}
    assert all(after[k] < before[k] for k in before), (before, after)


def test_without_qgt_no_loss_and_only_the_warmup():
    qat = _dense_qat("ste", 4)
    qat(np.zeros((1, 6), np.float32))
    assert qat.losses == [] and [type(c).__name__ for c in method_callbacks(qat, 1, 1)] == ["WarmupRamp"]


def test_warmup_blends_float_into_quantized_weights_in_training_only():
    from tinyq.qat import quantized_layers
    from tinyq.quantizers.qgt import WARMUP

    qat = _dense_qat("ste", 2)
    x = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
    layer, weight, quantizer, qvars = next(quantized_layers(qat))
    hard = quantizer(weight, False, qvars).numpy()
    for r in (0.0, 0.4, 1.0):
        qvars["quant_ramp"].assign(r)
        np.testing.assert_allclose(quantizer(weight, True, qvars).numpy(), weight.numpy() + r * (hard - weight.numpy()),
                                   atol=1e-6)
        np.testing.assert_allclose(quantizer(weight, False, qvars).numpy(), hard)  # inference: always quantized
    ramp = method_callbacks(qat, epochs=10, steps=10)[0]
    ramp.set_model(qat)
    ramp.on_epoch_begin(1)
    ramp.on_train_batch_begin(5)
    assert float(qvars["quant_ramp"]) == pytest.approx(min(1.0, 0.15 / WARMUP))
    assert qat(x, training=False).shape == (8, 3)


# --- PACT / CG-PACT ---------------------------------------------------------------------------

from tinyq.quantizers.pact import deployable_pact, pact_quantize  # noqa: E402

X = np.array([-1.0, 0.1, 0.3, 0.5, 0.9, 2.0], np.float32)


def test_pact_forward_golden():
    # alpha 1, 2 bits: levels 0, 1/3, 2/3, 1; round half to even puts 1.5 steps on 2
    y = pact_quantize(tf.constant(X), tf.constant(1.0), 2).numpy()
    np.testing.assert_allclose(y, [0, 0, 1 / 3, 2 / 3, 1, 1], atol=1e-6)


@pytest.mark.parametrize("clip_gradient", [False, True])
def test_pact_alpha_gradient_against_the_papers(clip_gradient):
    alpha = tf.Variable(1.0)
    x = tf.Variable(X)
    with tf.GradientTape(persistent=True) as tape:
        y = tf.reduce_sum(pact_quantize(x, alpha, 2, clip_gradient))
    u = np.clip(X, 0, None)
    inside = (X >= 0) & (X < 1)
    expect = float((X >= 1).sum())  # PACT: 1 per clipped input
    if clip_gradient:  # CG-PACT adds Q(x/alpha) - x/alpha below the clip
        expect += float(((np.round(u * 3) / 3 - u) * inside).sum())
    assert float(tape.gradient(y, alpha)) == pytest.approx(expect, abs=1e-5)
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), inside.astype(np.float32))


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("clip_gradient", [False, True])
def test_deployable_pact_matches_the_math(bits, clip_gradient):
    x = tf.Variable(tf.random.stateless_uniform((500,), seed=(bits, 1), minval=-0.5, maxval=2.5))
    alpha = tf.Variable(1.7)
    with tf.GradientTape(persistent=True) as tape:
        a = pact_quantize(x, alpha, bits, clip_gradient)
        b = deployable_pact(x, alpha, bits, clip_gradient)
        la, lb = tf.reduce_sum(a * tf.range(500.0)), tf.reduce_sum(b * tf.range(500.0))
    np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-5)
    assert len(np.unique(np.round(b.numpy() / (1.7 / (2 ** bits - 1)), 3))) <= 2 ** bits
    np.testing.assert_allclose(tape.gradient(lb, x).numpy(), tape.gradient(la, x).numpy(), atol=1e-4)
    assert float(tape.gradient(lb, alpha)) == pytest.approx(float(tape.gradient(la, alpha)), rel=1e-3)


def test_act_bits_need_an_activation_method():
    with pytest.raises(TinyqError, match=r"--act-bits 4 needs an activation quantizer.*ste\+cgpact"):
        QuantSpec(method="ste", act_bits=4)
    with pytest.raises(TinyqError, match="2 activations methods|activations methods"):
        QuantSpec(method="pact+cgpact", act_bits=4)
    assert registry.parse("qgt+cgpact").activations.name == "cgpact"


@pytest.mark.slow
@pytest.mark.parametrize("act_bits", [2, 4])
def test_pact_deploys_as_b_bit_levels_in_int8(act_bits):
    """The int8 activations TFLM computes hold at most 2^b levels; Keras and TFLM agree."""
    import sys
    from pathlib import Path

    from tflite_micro import runtime

    from tinyq.runtimes import model_input
    from tinyq.contract import InputContract
    from tinyq.tflite import flatbuffer
    from tinyq.convert.converter import convert
    from tinyq.plan import default_plan
    from tinyq.qat import diagnostics, quantize_model

    sys.path.insert(0, str(Path(__file__).parent))
    from test_qat import data, small_model

    model = small_model()
    plan = default_plan(model, 4, "cgpact", keep_8bit=(), act_bits=act_bits)
    x, y = data(64)
    qat = quantize_model(model, plan, calibration=x)
    qat.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    qat.fit(x, y, epochs=2, batch_size=16, verbose=0)
    alphas = {k: v["pact_alpha"] for k, v in diagnostics(qat).items() if "pact_alpha" in v}
    assert len(alphas) == 3 and all(a > 0 for a in alphas.values())
    contract = InputContract(resolution=24)
    pixels = (x * 255).astype(np.uint8)
    tflite = convert(qat, pixels, contract)
    fb = flatbuffer.parse(tflite)
    mins = [op for op in fb.ops if op.name == "MINIMUM"]
    assert len(mins) == 3
    micro = runtime.Interpreter.from_bytes(tflite, arena_size=1 << 20,
                                           intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors)
    q = model_input(fb, pixels, contract)
    keras_pred = qat.predict(x, verbose=0).argmax(1)
    tflm_pred = []
    for xi in q:
        micro.set_input(xi[None], 0)
        micro.invoke()
        tflm_pred.append(np.array(micro.get_output(0))[0].argmax())
        for op in mins:
            values = np.array(micro.GetTensor(op.outputs[0], 0)["tensor_data"]).astype(int)
            assert values.min() >= -128 and values.max() <= -128 + 2 ** act_bits - 1
    assert np.mean(np.array(tflm_pred) == keras_pred) >= 0.95


# --- DAQ --------------------------------------------------------------------------------------

from tinyq.quantizers.daq import BETA_MAX, TOL, dasr, daq_quantize, temperature  # noqa: E402


def _dasr_numpy(u, beta, lo, hi):
    c = np.clip(np.round(u), lo, hi)
    levels = c[:, None] + np.array([-1.0, 0.0, 1.0])
    logits = np.where((levels >= lo) & (levels <= hi), -beta[:, None] * (u[:, None] - levels) ** 2, -1e9)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return (p * levels).sum(1), p, levels


def test_daq_temperature_controller():
    g = grid(4)
    u = tf.constant([0.0, 0.25, -2.4, 0.499, 9.0])
    beta = temperature(u, g).numpy()
    np.testing.assert_allclose(beta[:3], [math.log(1 / TOL) / g_ for g_ in (1.0, 0.5, 0.2)], rtol=1e-5)
    assert beta[3] == BETA_MAX  # at a decision boundary soft cannot match hard: capped
    # u = 9 lies beyond the top code 7: distance 2 > 0.5, the gap floors and beta caps
    assert beta[4] == BETA_MAX


def test_dasr_forward_golden_and_within_tolerance():
    g = grid(4)
    u = np.array([0.0, 0.3, -1.2, 6.9, 7.0, -7.0], np.float32)
    beta = temperature(tf.constant(u), g)
    soft = dasr(tf.constant(u), beta, g).numpy()
    expect, _, _ = _dasr_numpy(u, beta.numpy(), g.lo, g.hi)
    np.testing.assert_allclose(soft, expect, atol=1e-5)
    assert soft[0] == pytest.approx(0.0, abs=1e-6)  # symmetric neighbours cancel
    assert soft[4] < 7.0 and soft[5] > -7.0  # the top code has one neighbour only: pulled inward
    np.testing.assert_allclose(soft, np.clip(np.round(u), g.lo, g.hi), atol=TOL * 1.2)


def test_dasr_gradient_is_the_soft_argmax_derivative():
    # d u_soft / d u = sum_j l_j p_j (a_j - sum_k p_k a_k), a_j = -2 beta (u - l_j), beta constant
    g = grid(2)
    u = tf.Variable([0.1, -0.35, 0.8, -1.9])
    with tf.GradientTape() as tape:
        beta = temperature(u, g)
        y = tf.reduce_sum(dasr(u, beta, g))
    got = tape.gradient(y, u).numpy()
    un, bn = u.numpy(), beta.numpy()
    _, p, levels = _dasr_numpy(un, bn, g.lo, g.hi)
    a = -2 * bn[:, None] * (un[:, None] - levels)
    expect = (levels * p * (a - (p * a).sum(1, keepdims=True))).sum(1)
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-6)
    assert np.all(np.abs(got) > 1e-3)  # no vanishing gradient, unlike hard rounding


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_daq_trains_on_the_hard_grid_with_soft_gradients(bits):
    from tinyq.quantizers.daq import DAQ

    q = DAQ(bits=bits)
    from test_quantizers import _Holder  # the stand-in layer for Quantizer.build

    qvars = q.build(tf.TensorShape((3, 3, 4, 5)), "kernel", _Holder())
    w = tf.random.stateless_normal((3, 3, 4, 5), seed=(3, bits)) * 0.2
    from tinyq.quantizers import mse_scale

    qvars["scale"].assign(mse_scale(w.numpy(), bits))
    wv = tf.Variable(w)
    with tf.GradientTape(persistent=True) as tape:
        trained = q(wv, True, qvars)
        soft = daq_quantize(wv, qvars["scale"], q.grid)
        weighting = tf.random.stateless_normal(w.shape, seed=(9, bits))
        lt, ls = tf.reduce_sum(trained * weighting), tf.reduce_sum(soft * weighting)
    np.testing.assert_allclose(trained.numpy(), q(w, False, qvars).numpy(), atol=1e-6)  # the deployed values
    # equal except at the clip level, where the container fake-quant passes no gradient (as for ste)
    top = np.abs(trained.numpy()) >= q.grid.top_level * qvars["scale"].numpy() * (1 - 1e-6)
    np.testing.assert_allclose(tape.gradient(lt, wv).numpy()[~top], tape.gradient(ls, wv).numpy()[~top], atol=1e-5)
    steps = (soft.numpy() - trained.numpy()) / (qvars["scale"].numpy() / 1.0)
    assert np.mean(np.abs(steps) <= TOL * 1.01) > 0.95  # soft within TOL steps but near boundaries


# --- SAT --------------------------------------------------------------------------------------

def test_sat_codes_golden():
    from tinyq.quantizers.sat import sat_codes

    # one channel; tanh clamp divides by max|tanh| = tanh(1); 4-bit levels -7..7
    w = tf.constant([[1.0], [-0.5], [0.1], [0.0]])
    t = np.tanh([1.0, -0.5, 0.1, 0.0]) / np.tanh(1.0)
    np.testing.assert_allclose(sat_codes(w, grid(4)).numpy().ravel(), np.round(t * 7))
    # 2 bits: mid-rise levels, the largest weight on the top level
    np.testing.assert_allclose(sat_codes(w, grid(2)).numpy().ravel(),
                               np.clip(np.round(t * 1.5 - 0.5), -2, 1) + 0.5)


def test_sat_gradient_is_the_clamp_derivative_straight_through_rounding():
    from tinyq.quantizers.sat import sat_codes

    w = tf.Variable([[0.3], [-0.2], [0.9]])
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(sat_codes(w, grid(8)) * tf.constant([[1.0], [2.0], [3.0]]))
    # y = sum_i a_i * 127 * tanh(w_i) / tanh(w_max) (rounding straight through), w_max = 0.9
    a, wn, top = np.array([1.0, 2.0, 3.0]), np.array([0.3, -0.2, 0.9]), np.tanh(0.9)
    sech2 = 1 - np.tanh(wn) ** 2
    expect = 127 * a * sech2 / top
    expect[2] -= 127 * sech2[2] * (a * np.tanh(wn)).sum() / top ** 2
    np.testing.assert_allclose(tape.gradient(y, w).numpy().ravel(), expect, rtol=1e-4)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_sat_scale_starts_where_the_layer_is_reproduced(bits):
    from tinyq.quantizers.sat import SAT, sat_codes

    w = np.random.default_rng(bits).standard_normal((3, 3, 4, 6)).astype(np.float32) * 0.1
    q = SAT(bits=bits)
    s = q.init_scale(w)
    levels = sat_codes(tf.constant(w), q.grid).numpy().reshape(-1, 6)
    wc = w.reshape(-1, 6)
    err = ((wc - levels * s) ** 2).sum(0)
    for factor in (0.9, 1.1):  # least squares: any other scale reproduces the channel worse
        assert np.all(err <= ((wc - levels * s * factor) ** 2).sum(0))


# --- CPQ and DropBits -------------------------------------------------------------------------

from tinyq.quantizers.cpq import TAU, WINDOW, coarse, cpq_quantize, level_probabilities  # noqa: E402


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_cpq_probabilities_golden():
    g = grid(4)
    codes, p = level_probabilities(tf.constant([0.0, 0.3, 7.0]), g)
    codes, p = codes.numpy(), p.numpy()
    np.testing.assert_allclose(codes[0], [-2, -1, 0, 1, 2])
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[0], p[0][::-1], rtol=1e-5)  # centred on a level: symmetric
    mass = _sigmoid((codes[1] + 0.5 - 0.3) / TAU) - _sigmoid((codes[1] - 0.5 - 0.3) / TAU)
    np.testing.assert_allclose(p[1], mass / mass.sum(), rtol=1e-5)
    # at the top code the upper tail belongs to it; codes beyond the grid get nothing
    assert p[2][2] > 0.5 and p[2][3] == pytest.approx(0, abs=1e-9) and p[2][4] == pytest.approx(0, abs=1e-9)


def test_cpq_multiclass_straight_through_gradient():
    # backward: d/du of the expected level sum_l p_l(u) * l; forward: a sampled level
    g = grid(4)
    w = tf.Variable([[0.13], [-0.26], [0.045]])
    s = tf.constant([0.1])
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(cpq_quantize(w, s, g, seed=tf.constant([1, 2])))
    got = tape.gradient(y, w).numpy().ravel()
    eps = 1e-3
    expect = []
    for u in (1.3, -2.6, 0.45):  # not on a decision boundary, where the window moves
        e = [float(tf.reduce_sum(level_probabilities(tf.constant([v]), g)[1] *
                                 level_probabilities(tf.constant([v]), g)[0])) for v in (u - eps, u + eps)]
        expect.append((e[1] - e[0]) / (2 * eps))  # d expected / du; times s, divided by s: d/dw
    np.testing.assert_allclose(got, expect, rtol=2e-2)


def test_cpq_samples_levels_and_clusters():
    g = grid(2)
    u = tf.fill([20000], 0.2)  # between levels -0.5 (code -1... ) and 0.5: nearest code 0
    out = cpq_quantize(u[:, None] * 0.1 + 0.05, tf.constant([0.1]), g, seed=tf.constant([3, 4])).numpy()
    levels = np.round(out / 0.1, 4)
    assert set(np.unique(levels)) <= {-1.5, -0.5, 0.5, 1.5}
    codes, p = level_probabilities(tf.constant([0.2]), g)
    freq = {lv: np.mean(levels == lv) for lv in (-0.5, 0.5, 1.5)}
    for code, prob in zip(codes.numpy()[0], p.numpy()[0]):
        if prob > 0.01:
            assert freq[code + 0.5] == pytest.approx(prob, abs=0.02)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_dropbits_grid_is_a_coarser_subset(bits):
    g = grid(bits)
    codes = tf.constant(np.arange(g.lo, g.hi + 1, dtype=np.float32))
    c = coarse(codes, g).numpy()
    assert set(c + g.offset) <= set(g.levels)
    assert len(set(c)) <= max(2, (len(g.levels) + 1) // 2)


def test_cpq_test_time_is_hard_rounding():
    from tinyq.quantizers.cpq import CPQ
    from tinyq.quantizers.uniform import uniform_quantize

    q = CPQ(bits=4)
    w = tf.random.stateless_normal((8, 3), seed=(5, 5))
    s = tf.constant([0.3, 0.2, 0.5])
    np.testing.assert_allclose(q.quantize(w, s, {}, False).numpy(), uniform_quantize(w, s, q.grid).numpy())
    assert WINDOW == 5


@pytest.mark.parametrize("name", [n for n in registry.names() if registry.get(n).kind == "activations"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_activation_quantizer_config_round_trip(name, bits):
    q = registry.parse(name).activation_quantizer(bits)
    again = type(q).from_config(q.get_config())
    assert again == q and again.clip_gradient == (name == "cgpact") and again.bits == bits


@pytest.mark.parametrize("relu6", ["layer", "activation"])
@pytest.mark.parametrize("method", [m for m in registry.names() if registry.parse(m).activation_quantizer(8)])
def test_pact_alpha_is_the_only_clip(method, relu6):
    """Under PACT the ReLU before it loses its fixed clip (``ReLU(6)`` or ``Activation("relu6")``):
    alpha may train past it."""
    import sys
    from pathlib import Path

    from tinyq.plan import default_plan
    from tinyq.qat import quantize_model

    sys.path.insert(0, str(Path(__file__).parent))
    from test_qat import data, small_model

    model = small_model()
    if relu6 == "activation":
        model = keras.models.clone_model(model, clone_function=lambda layer: L.Activation("relu6", name=layer.name)
                                         if isinstance(layer, L.ReLU) else layer.__class__.from_config(layer.get_config()))
        model.set_weights(small_model().get_weights())
        assert sum(isinstance(layer, L.Activation) for layer in model.layers) == 3
    x, _ = data(16)
    qat = quantize_model(model, default_plan(model, 8, method, keep_8bit=(), act_bits=8), calibration=x)
    pacts = [w for w in qat.layers if "alpha" in getattr(w, "_output_quantizer_vars", {})]
    assert len(pacts) == 3 and all(w.layer.max_value is None for w in pacts)
    conv, first = qat.get_layer("quant_c1"), pacts[0]
    pre = keras.Model(qat.input, conv.output)
    factor = 12.0 / float(pre(x).numpy().max())
    for v in conv.weights:  # a conv whose outputs pass 6: weights, bias and step scaled alike
        if v.name.split("/")[-1].split(":")[0] in ("kernel", "bias", "kernel_scale"):
            v.assign(v * factor)
    assert pre(x).numpy().max() > 11.5
    first._output_quantizer_vars["alpha"].assign(100.0)
    assert keras.Model(qat.input, first.output)(x).numpy().max() > 11
