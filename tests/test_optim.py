"""tinyq.optim: Adam with steps on quantizer scales relative to each scale."""
import numpy as np
import pytest

from tinyq import optim
from tinyq._tf import keras, tf
from tinyq.layers import QuantConv2D
from tinyq.qat import quantize_model, quantized_layers
from tinyq.quantizers import registry
from tinyq.spec import QuantSpec


def first_step(lr: float, relative: bool) -> tuple[np.ndarray, np.ndarray]:
    """One Adam step on ``sum(s) + sum(w)`` from s = w = [1e-3, 1e-1]; returns the new (s, w)."""
    s = tf.Variable([1e-3, 1e-1])
    w = tf.Variable([1e-3, 1e-1])
    opt = optim.Adam(lr, relative=[s] if relative else [], epsilon=1e-12)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(s) + tf.reduce_sum(w)
    opt.apply_gradients(zip(tape.gradient(loss, [s, w]), [s, w]))
    return s.numpy(), w.numpy()


def test_scales_step_relative_to_themselves_other_variables_as_adam():
    """Adam's first step is ``lr`` for any gradient; on a scale it becomes ``gain * lr * |s|``."""
    s, w = first_step(1e-3, relative=True)
    np.testing.assert_allclose(s, np.array([1e-3, 1e-1]) * (1 - optim.GAIN * 1e-3), rtol=1e-5)
    np.testing.assert_allclose(w, np.array([1e-3, 1e-1]) - 1e-3, atol=1e-7)
    s_plain, _ = first_step(1e-3, relative=False)
    np.testing.assert_allclose(s_plain, w, atol=1e-7)  # without `relative`: plain Adam
    assert s_plain[0] == pytest.approx(0.0, abs=1e-7)  # what plain Adam does to a 1e-3 scale: gone in one step


def test_a_small_scale_survives_many_steps():
    """200 steps all pushing a 7e-3 scale down (the depthwise collapse): plain Adam takes it through 0,
    relative steps shrink it by (1 - gain * lr) per step at most."""
    out = {}
    for relative in (False, True):
        s = tf.Variable([7e-3])
        opt = optim.Adam(5e-4, relative=[s] if relative else [])
        for _ in range(200):
            opt.apply_gradients([(tf.constant([1.0]), s)])
        out[relative] = float(s.numpy()[0])
    assert out[False] < 0
    assert out[True] == pytest.approx(7e-3 * (1 - optim.GAIN * 5e-4) ** 200, rel=1e-3)


@pytest.mark.parametrize("method", [n for n in registry.names() if registry.get(n).kind != "activations"])
def test_step_variables_of_a_qat_model(method):
    """One scale per quantized layer (CPQ learning widths: one per width too), none of them kernels."""
    i = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c")(i)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    model = keras.Model(i, keras.layers.Dense(2, name="d")(keras.layers.Flatten()(x)))
    learn = getattr(registry.parse(method).weights.quantizer, "learns_bits", False)
    qat = quantize_model(model, {n: QuantSpec(method=method, weight_bits=8, learn_bits=learn)
                                 for n in ("c", "dw", "d")})
    found = optim.step_variables(qat)
    per_layer = 1 + (len((2, 4)) if learn else 0)
    assert len(found) == 3 * per_layer
    scales = {id(qvars["scale"]) for _, _, _, qvars in quantized_layers(qat)}
    assert scales <= {id(v) for v in found}
    assert all("scale" in v.name for v in found)


def test_step_variables_of_tinyq_layers():
    i = keras.Input((8, 8, 3))
    x = QuantConv2D(4, 1, method="ste", bits=2)(i)
    model = keras.Model(i, x)
    found = optim.step_variables(model)
    assert [v.name.split("/")[-1] for v in found] == ["kernel_scale:0"]


def test_float_model_has_no_step_variables():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert optim.step_variables(model) == []
