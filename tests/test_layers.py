"""tinyq's Keras layers in a user's own model: every weight method and bit width, PACT, saving,
whole-model application, and `tinyq quantize` deploying what the layers declare."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tinyq._tf import keras, tf
from tinyq import layers as tl
from tinyq.cli import main
from tinyq.errors import TinyqError
from tinyq.quantizers import registry
from tinyq.quantizers.grid import grid

from conftest import BITS, RES

L = keras.layers
WEIGHT_METHODS = [n for n, m in registry.METHODS.items() if m.kind == "weights"] + ["qgt"]
ACT_METHODS = [n for n, m in registry.METHODS.items() if m.kind == "activations"]
LAYERS = {"conv": (tl.QuantConv2D, dict(filters=6, kernel_size=3)),
          "depthwise": (tl.QuantDepthwiseConv2D, dict(kernel_size=3)),
          "dense": (tl.QuantDense, dict(units=5))}


def _layer(kind, method, bits):
    cls, args = LAYERS[kind]
    layer = cls(method=method, bits=bits, **args)
    shape = (2, 7) if kind == "dense" else (2, 8, 8, 4)
    return layer, tf.random.stateless_normal(shape, [1, 2])


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("method", WEIGHT_METHODS)
def test_weight_layer_quantizes_its_kernel(kind, bits, method):
    layer, x = _layer(kind, method, bits)
    y = layer(x, training=False)
    kernel = getattr(layer, layer.kernel_attr)
    q = layer.quantizer(kernel, False, layer.quantizer_vars).numpy()
    scale = np.abs(layer.quantizer_vars["scale"].numpy())
    # the layer computes with the quantized kernel: the same output as the float layer on Q(w)
    plain = tl.FLOAT_CLASSES[type(layer)].from_config({k: v for k, v in layer.get_config().items()
                                                       if k not in ("method", "bits")})
    plain.build(x.shape)
    plain.set_weights([q, *[w.numpy() for w in layer.weights if w.name.endswith("bias:0")]])
    np.testing.assert_allclose(y.numpy(), plain(x).numpy(), rtol=1e-5, atol=1e-6)
    # Q(w) lies on the b-bit grid, per channel
    axis = {"conv": -1, "depthwise": 2, "dense": None}[kind]
    codes = q / (scale if axis is None else np.expand_dims(scale, [a for a in range(q.ndim) if a != q.ndim + axis
                                                                    and a != axis]))
    levels = np.array(layer.quantizer.level_values(layer.quantizer_vars))
    assert len(levels) <= 2 ** bits and (method == "levels" or list(levels) == grid(bits).levels)
    assert np.abs(codes[..., None] - levels).min(-1).max() < 1e-3
    # one training step moves the kernel (the method's gradient reaches it)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(layer(x, training=True))) + tf.add_n(layer.losses or [tf.constant(0.0)])
    grad = tape.gradient(loss, kernel)
    assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("method", WEIGHT_METHODS)
def test_weight_layer_config_round_trip(kind, method):
    layer, x = _layer(kind, method, 2)
    layer(x)
    config = layer.get_config()
    assert config["method"] == method and config["bits"] == 2
    again = type(layer).from_config(config)
    assert again.get_config() == config


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("method", ACT_METHODS)
def test_pact_layer(bits, method):
    layer = tl.PACT(bits=bits, clip_gradient=method == "cgpact", alpha=2.0)
    assert layer.method == method
    x = tf.linspace(-1.0, 3.0, 401)
    y = layer(x).numpy()
    n = 2 ** bits - 1
    assert y.min() == 0 and abs(y.max() - 2.0) < 1e-5  # clipped to [0, alpha]
    assert len(np.unique(np.round(y / (2.0 / n), 4))) <= n + 1  # on 2^b levels
    assert np.allclose(np.round(y / (2.0 / n)), y / (2.0 / n), atol=1e-3)
    config = layer.get_config()
    assert tl.PACT.from_config(config).get_config() == config
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(layer(x))
    assert float(tape.gradient(out, layer.alpha)) > 0  # alpha learns


def test_bad_arguments_fail_clearly():
    with pytest.raises(TinyqError, match="expected one of .*; got 'nope'"):
        tl.QuantConv2D(4, 3, method="nope")
    with pytest.raises(TinyqError, match="unsupported weight bits 1"):
        tl.QuantDense(4, bits=1)
    with pytest.raises(TinyqError, match="put a tinyq.layers.PACT after it"):
        tl.QuantConv2D(4, 3, method="ste+pact")
    with pytest.raises(TinyqError, match="unsupported activation bits 9"):
        tl.PACT(bits=9)


def _user_model():
    """A user's model written with tinyq layers: declared widths, BN after the convs, a PACT
    (BN momentum 0.5: the few steps a test trains set its statistics)."""
    keras.utils.set_random_seed(3)
    i = L.Input((RES, RES, 3))
    x = tl.QuantConv2D(8, 3, strides=2, padding="same", use_bias=False, method="ste", bits=8, name="stem")(i)
    x = L.BatchNormalization(momentum=0.5)(x)
    x = L.ReLU(6.0)(x)
    x = tl.QuantDepthwiseConv2D(3, padding="same", use_bias=False, method="ste", bits=8, name="dw")(x)
    x = L.BatchNormalization(momentum=0.5)(x)
    x = L.ReLU(6.0)(x)
    x = tl.QuantConv2D(16, 1, use_bias=False, method="qgt", bits=2, name="pw")(x)
    x = L.BatchNormalization(momentum=0.5)(x)
    x = tl.PACT(bits=4, clip_gradient=True, name="pw_pact")(x)
    x = L.Conv2D(16, 1, name="plain")(x)  # a plain layer: takes --bits
    x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(i, L.Softmax()(tl.QuantDense(2, method="ste", bits=4, name="head")(x)))


def test_user_model_trains_saves_and_loads(tmp_path):
    from tinyq.data import synthetic
    from tinyq.qat import load_model

    from tinyq import optim

    model = _user_model()
    data = synthetic(64, size=RES, seed=1)
    model.compile(optim.Adam(1e-3, relative=optim.step_variables(model)), "sparse_categorical_crossentropy")  # README
    model(data.x[:2] / 255.0, training=True)
    assert len(model.losses) == 1 and float(model.losses[0]) > 0  # pw's QGT acts in a plain fit, no callback
    pw = model.get_layer("pw")
    before, scale = pw.kernel.numpy().copy(), pw.quantizer_vars["scale"].numpy().copy()
    model.fit(data.x / 255.0, data.y, epochs=1, batch_size=16, verbose=0)
    assert not np.array_equal(before, pw.kernel.numpy())
    moved = np.abs(pw.quantizer_vars["scale"].numpy() / scale - 1)  # 4 steps of at most ~1% each
    assert 0 < moved.max() < 4 * optim.GAIN * 1e-3 * 1.01
    path = tmp_path / "user.h5"
    model.save(path)
    again = load_model(path)
    assert [type(layer).__name__ for layer in again.layers] == [type(layer).__name__ for layer in model.layers]
    np.testing.assert_array_equal(again.predict(data.x / 255.0, verbose=0), model.predict(data.x / 255.0, verbose=0))
    assert tl.declared(again) == {"stem": {"method": "ste", "weight_bits": 8}, "dw": {"method": "ste", "weight_bits": 8},
                                  "pw": {"method": "qgt", "weight_bits": 2, "activations": "cgpact", "act_bits": 4},
                                  "head": {"method": "ste", "weight_bits": 4}}


def test_quantize_layers_applies_the_plan_to_a_whole_model():
    from tinyq import recipes
    from tinyq.plan import default_plan

    model = recipes.get("person-detect").model(3)
    q = tl.quantize_layers(model, bits=2, method="qgt+cgpact", act_bits=4)
    plan = default_plan(model, 2, "qgt+cgpact", act_bits=4)
    for layer in q.layers:
        if layer.name in plan:
            assert type(layer) is tl.WEIGHT_CLASSES[type(model.get_layer(layer.name))]
            assert (layer.method, layer.bits) == ("qgt", plan[layer.name].weight_bits)
    pacts = {layer.name: layer.bits for layer in q.layers if isinstance(layer, tl.PACT) and layer.clip_gradient}
    # every ReLU after a weight layer, as tinyq's QAT places them: --act-bits after the 2-bit
    # pointwise convs, 8 bits after the layers kept at 8
    assert pacts == {"conv1_relu": 8, **{f"dw{i}_relu": 8 for i in range(1, 14)},
                     **{f"pw{i}_relu": 4 for i in range(1, 14)}}
    np.testing.assert_array_equal(q.get_layer("pw3").kernel.numpy(), model.get_layer("pw3").kernel.numpy())
    x = np.random.default_rng(0).random((2, 96, 96, 3)).astype(np.float32)
    assert q(x).shape == (2, 2)


def test_quantize_layers_model_trains_and_saves_as_h5(tmp_path):
    """Layers rebuilt from a config (quantize_layers, loading) keep their name scope: with every
    weight named ``kernel:0`` a trained model's .h5 failed with "name already exists"."""
    from tinyq import optim
    from tinyq.qat import load_model

    keras.utils.set_random_seed(0)
    i = L.Input((RES, RES, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, strides=2, use_bias=False)(i)))
    x = L.ReLU()(L.Conv2D(8, 1)(L.DepthwiseConv2D(3, padding="same")(x)))
    float_model = keras.Model(i, L.Dense(2, activation="softmax")(L.GlobalAveragePooling2D()(x)))
    model = tl.quantize_layers(float_model, bits=2, method="qgt+cgpact", act_bits=4)
    names = [w.name for w in model.weights]
    assert len(set(names)) == len(names)
    model.compile(optim.Adam(1e-3, relative=optim.step_variables(model)), "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((16, RES, RES, 3)).astype(np.float32)
    model.fit(x, np.arange(16) % 2, epochs=1, batch_size=8, verbose=0)
    model.save(tmp_path / "q.h5")
    again = load_model(tmp_path / "q.h5")
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))
    assert tl.declared(again) == tl.declared(model)


@pytest.mark.slow
def test_quantize_deploys_what_the_layers_declare(folders, tmp_path):
    """A model a user trained with tinyq layers deploys as trained: ``--epochs 0`` ships its
    grids (steps, BN folded in) and PACT clip, not a fresh calibration of its latent weights."""
    from tinyq import optim
    from tinyq.verify import tflm_predictions
    from tinyq.contract import InputContract
    from tinyq.tflite.breakdown import inspect_model
    from tinyq.data import load_folder
    from tinyq.qat import load_model, quantized_layers

    user = _user_model()
    data = load_folder(folders / "labelled", RES)
    user.compile(optim.Adam(1e-2, relative=optim.step_variables(user)), "sparse_categorical_crossentropy")
    user.fit(data.x / 255.0, data.y, epochs=2, batch_size=16, verbose=0)
    path = tmp_path / "user.h5"
    user.save(path)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, [str(a) for a in ("quantize", path, "--bits", 8, "--data", folders / "labelled",
                                                   "--epochs", 0, "--out", out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    assert "4 layers declare their quantization" in r.stderr
    assert "start: the trained grids and clips of stem, dw, pw, head, pw_pact" in r.stderr
    plan = json.loads((out / "config.json").read_text())["plan"]
    assert (plan["pw"]["method"], plan["pw"]["weight_bits"], plan["pw"]["act_bits"]) == ("qgt+cgpact", 2, 4)
    assert (plan["head"]["weight_bits"], plan["plain"]["weight_bits"]) == (4, 8)  # declared; --bits
    info = inspect_model(out / "model.tflite")
    bits = sorted(t["bits"] for t in info["tensors"] if t["kind"] == "weights")
    assert bits == [2, 4, 8, 8, 8]  # pw as 2-bit LUT, head as INT4, stem, dw and plain INT8

    qat = load_model(out / "model.h5")
    bn = user.get_layer(user.get_layer("pw")._outbound_nodes[0].outbound_layer.name)
    k = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    trained = {w.layer.name: q(weight, False, v).numpy() for w, weight, q, v in quantized_layers(qat)}
    np.testing.assert_allclose(trained["pw"], tl.quantized_kernel(user.get_layer("pw")) * k, rtol=1e-5, atol=1e-7)
    assert qat.get_layer("quant_pw_pact")._output_quantizer_vars["alpha"].numpy() == user.get_layer("pw_pact").alpha.numpy()
    contract = InputContract(resolution=RES, channels=3, value_range=(0.0, 1.0), labels=("non_person", "person"))
    on_board = tflm_predictions((out / "model.tflite").read_bytes(), data, contract)
    assert (on_board == user.predict(data.x / 255.0, verbose=0).argmax(1)).mean() >= 0.9  # restarted: 0.83
    result = json.loads(CliRunner().invoke(main, ["check", str(out), "--data", str(folders / "labelled"),
                                                  "--json"]).stdout)
    assert result["tflm"]["n"] == 120 and result["tflm"]["agreement_with_keras"] >= 0.95
    assert result["tflm"]["disagreements"] == round(120 * (1 - result["tflm"]["agreement_with_keras"]))

    r = CliRunner().invoke(main, ["quantize", str(path), "--data", str(folders / "labelled"), "--size-budget", "64KB",
                                  "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "declares its layers' bits" in r.stderr and not (tmp_path / "x").exists()


def _trained_user_model(method, bits):
    """conv -> BN -> ReLU -> depthwise -> BN -> PACT -> pool -> dense, as if trained: steps away from
    their calibrated start, BN gains of both signs, conv channel 2 dead (gain 0, ReLU'd bias)."""
    keras.utils.set_random_seed(5)
    i = L.Input((12, 12, 3))
    x = tl.QuantConv2D(6, 3, padding="same", use_bias=False, method=method, bits=bits, name="conv")(i)
    x = L.ReLU()(L.BatchNormalization(name="bn1")(x))
    x = tl.QuantDepthwiseConv2D(3, padding="same", use_bias=False, method=method, bits=bits, name="dw")(x)
    x = tl.PACT(bits=4, name="act")(L.BatchNormalization(name="bn2")(x))
    x = L.GlobalAveragePooling2D()(x)
    user = keras.Model(i, L.Softmax()(tl.QuantDense(2, method=method, bits=bits, name="head")(x)))
    rng = np.random.default_rng(0)
    for bn in (user.get_layer("bn1"), user.get_layer("bn2")):
        gamma = rng.choice([-1.0, 1.0], 6) * rng.uniform(0.5, 2.0, 6)
        beta = rng.normal(0, 0.1, 6)
        if bn.name == "bn1":
            gamma[2], beta[2] = 0.0, -1.0
        bn.set_weights([gamma, beta, rng.normal(0, 0.1, 6), rng.uniform(0.5, 2.0, 6)])
    for name in ("conv", "dw", "head"):
        scale = user.get_layer(name).quantizer_vars["scale"]
        scale.assign(scale * rng.uniform(0.7, 1.3, scale.shape))
    user.get_layer("act").alpha.assign(2.5)
    return user


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("method", WEIGHT_METHODS)
def test_quantize_model_starts_from_what_the_layers_trained(method, bits):
    from tinyq.fit import method_callbacks
    from tinyq.qat import build_qat, quantized_layers

    user = _trained_user_model(method, bits)
    built = build_qat(tl.to_float(user), tl.apply_declared({}, tl.declared(user)), start=tl.trained_state(user))
    qat = built.model
    k = {name: (lambda g, v, e: g / np.sqrt(v + e))(bn.gamma.numpy(), bn.moving_variance.numpy(), bn.epsilon)
         for name, bn in (("conv", user.get_layer("bn1")), ("dw", user.get_layer("bn2")))}
    live = [0, 1, 3, 4, 5]  # conv channel 2 is dead: dropped from conv, dw and head's inputs
    expected = {"conv": (tl.quantized_kernel(user.get_layer("conv")) * k["conv"])[..., live],
                "dw": (tl.quantized_kernel(user.get_layer("dw")) * k["dw"][None, None, :, None])[:, :, live],
                "head": tl.quantized_kernel(user.get_layer("head"))[live]}
    assert built.dropped_channels == {"conv": 1}
    latent = {"conv": (user.get_layer("conv").kernel.numpy() * k["conv"])[..., live],
              "dw": (user.get_layer("dw").depthwise_kernel.numpy() * k["dw"][None, None, :, None])[:, :, live],
              "head": user.get_layer("head").kernel.numpy()[live]}
    got = {w.layer.name: quantizer(weight, False, qvars).numpy() for w, weight, quantizer, qvars in quantized_layers(qat)}
    kernels = {w.layer.name: weight.numpy() for w, weight, quantizer, qvars in quantized_layers(qat)}
    assert sorted(built.carried) == ["act", "conv", "dw", "head"] or (method == "sat" and built.restarted)
    for name in built.carried:
        if name != "act":  # what the user's layers computed with, BN folded in; latent weights as trained
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6 * np.abs(expected[name]).max())
            start = expected[name] if method == "sat" and not np.allclose(kernels[name], latent[name]) else latent[name]
            np.testing.assert_allclose(kernels[name], start, rtol=1e-5, atol=1e-7)  # SAT may need k Q(w)
    assert float(qat.get_layer("quant_act")._output_quantizer_vars["alpha"].numpy()) == 2.5
    for name in built.restarted:  # the calibrated start for the kernel the user's layer computed with
        np.testing.assert_allclose(kernels[name], expected[name], rtol=1e-5, atol=1e-7)
    callbacks = method_callbacks(qat, 2, 2, built.carried)
    warmup = next(c for c in callbacks if type(c).__name__ == "WarmupRamp") if built.restarted else None
    assert warmup is not None or not any(type(c).__name__ == "WarmupRamp" for c in callbacks)
    if warmup is not None:  # only the restarted layers warm up: the carried ones are quantized already
        warmup.set_model(qat)
        warmup.on_epoch_begin(0)
        assert sorted({v.name.split("/")[0].removeprefix("quant_") for v in warmup.ramps}) == sorted(built.restarted)


@pytest.mark.parametrize("bits", BITS)
def test_to_float_computes_what_the_layers_do_but_activation_rounding(bits):
    """The teacher of ``tinyq quantize``: PACT's clip stays (a ReLU at alpha), only its rounding goes."""
    user = _trained_user_model("ste", bits)
    teacher = tl.to_float(user)
    x = 3.0 * tf.random.stateless_normal((8, 12, 12, 3), seed=(1, bits))
    pre = keras.Model(user.input, user.get_layer("bn2").output)(x).numpy()
    assert pre.max() > 2.5  # the clip is in play
    got = keras.Model(teacher.input, teacher.get_layer("act").output)(x).numpy()
    want = keras.Model(user.input, user.get_layer("act").output)(x).numpy()
    assert got.max() <= 2.5 + 1e-5
    np.testing.assert_allclose(got, want, atol=2.5 / 15 / 2 + 1e-5)  # within half of the 4-bit PACT's step
    np.testing.assert_allclose(teacher(x).numpy(), user(x).numpy(), atol=0.1)
