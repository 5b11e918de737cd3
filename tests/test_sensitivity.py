"""Layer sensitivity: Hutchinson and Fisher traces against a closed form, and the loss-increase table."""
import numpy as np
import pytest

from tinyq._tf import keras
from tinyq.errors import TinyqError
from tinyq.mixed.sensitivity import curvature, loss_increase, rounding_error

L = keras.layers


def _softmax_regression():
    keras.utils.set_random_seed(3)
    i = L.Input((5,))
    return keras.Model(i, L.Dense(3, activation="softmax", name="fc")(i))


@pytest.mark.parametrize("estimator, kwargs", [("hutchinson", {"samples": 300}), ("fisher", {})])
def test_trace_matches_the_closed_form(estimator, kwargs):
    # softmax regression: H = mean_i (x_i x_i^T) kron (diag p_i - p_i p_i^T), so
    # tr(H) = mean_i ||x_i||^2 (1 - sum_k p_ik^2); the Fisher equals it (no curvature inside the model)
    model = _softmax_regression()
    x = np.random.default_rng(0).standard_normal((64, 5)).astype(np.float32)
    p = model.predict(x, verbose=0).astype(np.float64)
    exact = np.mean((x.astype(np.float64) ** 2).sum(1) * (1 - (p ** 2).sum(1))) / 15
    got = curvature(model, x, estimator, batch=64 if estimator == "hutchinson" else 16, **kwargs)
    assert got["fc"] == pytest.approx(exact, rel=0.15)


def test_unknown_estimator_is_named():
    with pytest.raises(TinyqError, match="expected one of hutchinson, fisher"):
        curvature(_softmax_regression(), np.zeros((2, 5), np.float32), "newton")


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_rounding_error_is_zero_on_the_grid(bits):
    from tinyq.quantizers import grid

    g = grid(bits)
    codes = np.random.default_rng(bits).integers(g.lo, g.hi + 1, size=(3, 3, 4, 6))
    scale = np.array([0.1, 0.2, 0.05, 0.3, 0.01, 1.0])
    w = (codes + g.offset) * scale
    w[0, 0, 0] = (np.array([g.lo] * 6) + g.offset) * scale  # the full range in every channel
    w[0, 0, 1] = (np.array([g.hi] * 6) + g.offset) * scale
    assert rounding_error(w, bits, -1) == pytest.approx(0.0, abs=1e-10 * np.sum(w ** 2))


def test_loss_increase_table_on_a_small_model(float_model):
    from tinyq.qat import load_model

    model = load_model(float_model)
    x = np.random.default_rng(0).random((32, *model.input_shape[1:])).astype(np.float32)
    table = loss_increase(model, x, estimator="hutchinson", batch=16)
    assert len(table) == 4  # conv, depthwise, pointwise, dense
    for name, row in table.items():
        assert row["params"] > 0 and row["curvature"] == row["curvature"]  # finite, not NaN
        d = row["loss_increase"]
        assert d[2] >= d[4] >= d[8] >= 0.0, (name, d)  # more bits, less rounding, less loss
