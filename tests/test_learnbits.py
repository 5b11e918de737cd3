"""CPQ / DropBits learned bit widths (``--learn-bits``): the gate math, its gradients, the search end to end."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tinyq._tf import keras, tf
from tinyq.cli import main
from tinyq.errors import TinyqError
from tinyq.quantizers import cpq
from tinyq.quantizers.cpq import CPQ, bit_choices, expected_bits, nest
from tinyq.spec import QuantSpec

L = keras.layers


def test_choices_are_the_widths_tflm_runs_up_to_bits():
    assert bit_choices(8) == (2, 4, 8) and bit_choices(4) == (2, 4) and bit_choices(6) == (2, 4, 6)
    assert bit_choices(2) == (2,) and not CPQ(bits=2, learn_bits=True).learn_bits  # nothing to learn


def test_expected_bits_golden():
    # 2 + (4 - 2) * 0.5 + (8 - 4) * 0.5 * 0.25
    assert float(expected_bits((2, 4, 8), tf.constant([0.5, 0.25]))) == pytest.approx(3.5)
    assert float(expected_bits((2, 4, 8), tf.constant([1.0, 1.0]))) == pytest.approx(8.0)
    assert float(expected_bits((2, 4), tf.constant([0.0]))) == pytest.approx(2.0)


@pytest.mark.parametrize("z, expect", [((1, 1), 8), ((1, 0), 4), ((0, 1), 2), ((0, 0), 2)])
def test_nested_gates_pick_a_width(z, expect):
    levels = [tf.constant(2.0), tf.constant(4.0), tf.constant(8.0)]
    assert float(nest(levels, tf.constant(z, tf.float32))) == expect


def _learning_dense(bits: int = 8, size_weight: float = 1.0):
    keras.utils.set_random_seed(0)
    q = CPQ(bits=bits, channel_axis=-1, learn_bits=True, size_weight=size_weight, gate_gain=50.0)
    layer = L.Dense(6, name="learning")  # named: CPQ's draws are seeded by the layer's name
    layer.build((None, 12))
    qvars = q.build(layer.kernel.shape, "kernel", layer)
    q.calibrate(layer.kernel.numpy(), qvars)
    return q, layer, qvars


@pytest.mark.parametrize("logits, bits", [((3, 3), 8), ((3, -3), 4), ((-3, 3), 2), ((-3, -3), 2)])
def test_learned_bits_read_from_the_gates(logits, bits):
    q, layer, qvars = _learning_dense()
    qvars["keep"].assign(np.array(logits, np.float32) / q.gate_gain)
    assert q.learned_bits(qvars) == bits
    # at test time the layer computes with exactly that width's grid and scale
    w = layer.kernel
    scale = qvars["scale"] if bits == 8 else qvars[f"scale_w{bits}"]
    from tinyq.quantizers import grid
    from tinyq.quantizers.uniform import uniform_quantize

    expect = uniform_quantize(w, tf.abs(scale) + 1e-12, grid(bits)).numpy()
    got = q.quantize(w, tf.abs(qvars["scale"]) + 1e-12, qvars, training=False).numpy()
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    assert q.diagnostics(w, qvars)["learned_bits"] == bits


def test_every_width_starts_at_its_mse_scale():
    q, layer, qvars = _learning_dense()
    from tinyq.quantizers import mse_scale

    for c in (2, 4):
        np.testing.assert_allclose(qvars[f"scale_w{c}"].numpy(), mse_scale(layer.kernel.numpy(), c, -1))
    np.testing.assert_allclose(qvars["scale"].numpy(), mse_scale(layer.kernel.numpy(), 8, -1))


def test_gates_feel_the_task_and_the_price_of_bits():
    # the task (here: reproduce the float weights) wants more bits: its gradient opens the gates;
    # the size term's gradient closes them, in proportion to LEARN_BITS_COST * size_weight
    q, layer, qvars = _learning_dense()
    w = layer.kernel
    grads = []
    for _ in range(200):  # the gates are sampled: average enough draws (20 gave either sign on gate 2)
        with tf.GradientTape() as tape:
            err = tf.reduce_sum(tf.square(q.quantize(w, tf.abs(qvars["scale"]) + 1e-12, qvars, True) - w))
        grads.append(tape.gradient(err, qvars["keep"]).numpy())
    assert np.all(np.mean(grads, axis=0) < 0)
    with tf.GradientTape() as tape:
        cost = tf.add_n(q.layer_losses(w, qvars["scale"], qvars))
    pi = 1 / (1 + np.exp(-cpq.GATE_START))
    # E = 2 + 2 pi0 + 4 pi0 pi1: dE/dtheta0 = G pi0 (1 - pi0) (2 + 4 pi1), dE/dtheta1 = G pi1 (1 - pi1) 4 pi0
    expect = cpq.LEARN_BITS_COST * q.gate_gain * pi * (1 - pi) * np.array([2 + 4 * pi, 4 * pi])
    np.testing.assert_allclose(tape.gradient(cost, qvars["keep"]).numpy(), expect, rtol=1e-4)


def test_config_round_trip_keeps_learn_bits():
    q = CPQ(bits=4, channel_axis=None, learn_bits=True, size_weight=0.25, gate_gain=300.0)
    again = CPQ.from_config(q.get_config())
    assert again == q and again.learn_bits and again.size_weight == 0.25 and again.choices == (2, 4)
    assert again.gate_gain == 300.0


def test_gate_gain_gives_the_same_reach_for_any_data_size():
    # sum of a cosine-decayed lr (alpha 0.05) over the steps, times the gain: GATE_TRAVEL either way
    for lr, steps in [(2e-4, 6), (5e-4, 160)]:
        schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps, alpha=0.05)
        reach = sum(float(schedule(i)) for i in range(steps)) * cpq.gate_gain(lr, steps)
        assert reach == pytest.approx(cpq.GATE_TRAVEL, rel=1e-3)


def test_learn_bits_needs_cpq_and_room_to_learn(float_model, folders, tmp_path):
    with pytest.raises(TinyqError, match="--learn-bits needs a weight method that learns bit widths"):
        QuantSpec(method="ste", weight_bits=8, learn_bits=True)
    runner = CliRunner()
    r = runner.invoke(main, ["quantize", str(float_model), "--data", str(folders / "labelled"), "--bits", "2",
                             "--method", "cpq", "--learn-bits", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "nothing to learn" in r.stderr and not (tmp_path / "x").exists()
    r = runner.invoke(main, ["quantize", str(float_model), "--data", str(folders / "labelled"), "--method", "ste",
                             "--learn-bits", "--out", str(tmp_path / "y")])
    assert r.exit_code == 1 and "--method cpq" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("cost, widths", [(-50.0, {8}), (50.0, {2})])
def test_search_then_qat_at_the_learned_widths(float_model, folders, tmp_path, monkeypatch, cost, widths):
    """The search follows its objective both ways: bits rewarded, every layer keeps 8; priced out, every
    layer drops to 2 (the task's pull on the gates is tested above). Either way the run converts at the
    learned widths and runs in TFLM."""
    monkeypatch.setattr(cpq, "LEARN_BITS_COST", cost)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["quantize", str(float_model), "--data", str(folders / "labelled"),
                                  "--bits", "8", "--method", "cpq", "--learn-bits", "--keep-8bit", "none",
                                  "--epochs", "1", "--batch", "16", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    learned = json.loads((out / "learned_bits.json").read_text())
    assert len(learned["layers"]) == 4 and {d["bits"] for d in learned["layers"].values()} == widths
    plan = json.loads((out / "config.json").read_text())["plan"]
    assert {s["weight_bits"] for s in plan.values()} == widths and not any(s["learn_bits"] for s in plan.values())
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["learned_bits"].values()) == widths and metrics["learned_mean_bits"] == min(widths)
    history = json.loads((out / "history.json").read_text())
    assert len(history["bits"]) == 1 and len(history["qat"]) == 1
    report = json.loads((out / "report.json").read_text())
    assert set(report["card"]["weight_bits_in_file"]) == widths
    result = json.loads(CliRunner().invoke(main, ["check", str(out), "--data", str(folders / "labelled"),
                                                  "--json"]).stdout)
    assert result["tflm"]["n"] == 120 and result["tflm"]["agreement_with_keras"] >= 0.9
