"""TFLite's fixed-point arithmetic (golden values by hand) and the Keras model run in it."""
import numpy as np
import pytest

from tinyq._tf import keras
from tinyq.fixedpoint import (INT32_MAX, INT32_MIN, multiply_by_quantized_multiplier, quantize_multiplier,
                              rounding_divide_by_pot, softmax_int8, srdhm)
from tinyq.integer import IntegerModel, NotEmulated, nudged
from tinyq.plan import default_plan
from tinyq.qat import quantize_model

L = keras.layers


def test_quantize_multiplier_golden():
    q, shift = quantize_multiplier(np.array([0.5, 0.75, 1.0, 0.3, 0.0, 2.0 ** -40]))
    # 0.3 = 0.6 * 2^-1: q = round(0.6 * 2^31) = 1288490189
    assert q.tolist() == [1 << 30, 1610612736, 1 << 30, 1288490189, 0, 0]
    assert shift.tolist() == [0, 0, 1, -1, 0, 0]


def test_srdhm_rounds_to_nearest_ties_upwards_and_saturates():
    # a * b / 2^31 with b = 2^30 is a / 2: 1.5 -> 2, -1.5 -> -1, 2.5 -> 3, -2.5 -> -2
    assert srdhm(np.array([3, -3, 5, -5, 4]), 1 << 30).tolist() == [2, -1, 3, -2, 2]
    assert int(srdhm(INT32_MIN, INT32_MIN)) == INT32_MAX


def test_rounding_divide_by_pot_rounds_half_away_from_zero():
    assert rounding_divide_by_pot(np.array([5, -5, -3, 7, -7, 6]), 1).tolist() == [3, -3, -2, 4, -4, 3]
    assert rounding_divide_by_pot(np.array([7, -7, 6, -6]), 2).tolist() == [2, -2, 2, -2]


def test_multiply_by_quantized_multiplier_golden():
    # 1000 * 0.0123 = 12.3; 100 * 0.3 = 30
    assert int(multiply_by_quantized_multiplier(1000, *quantize_multiplier(0.0123))) == 12
    assert int(multiply_by_quantized_multiplier(100, *quantize_multiplier(0.3))) == 30
    # M = 0.5 is q = 2^30, shift 0: one rounding, ties upwards (-3.5 -> -3); M = 0.25 adds a shift
    # whose rounding goes away from zero (-7 * 0.5 = -3.5 -> -3, then -3 / 2 = -1.5 -> -2; 6 -> 3 -> 1.5 -> 2)
    assert int(multiply_by_quantized_multiplier(-7, *quantize_multiplier(0.5))) == -3
    assert multiply_by_quantized_multiplier(np.array([-7, 6]), *quantize_multiplier(0.25)).tolist() == [-2, 2]
    assert int(multiply_by_quantized_multiplier(3, *quantize_multiplier(2.5))) == 8  # left shift: 7.5 -> 8


def test_softmax_int8_golden_and_close_to_float():
    # equal logits: 1/2 = 128/256, stored as 128 - 128 = 0; 1 real unit apart: 0.731 * 256 = 187.2 -> 59
    out = softmax_int8(np.array([[0, 0], [10, -10], [127, -128]]), 0.05)
    assert out.tolist() == [[0, 0], [59, -59], [127, -128]]
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (500, 3))
    for scale in (0.02, 0.1, 0.5):
        z = x * scale
        p = np.exp(z - z.max(1, keepdims=True))
        want = np.clip(np.round(p / p.sum(1, keepdims=True) * 256) - 128, -128, 127)
        assert np.abs(softmax_int8(x, scale) - want).max() <= 1


def test_nudged_range_holds_zero():
    assert nudged(0.0, 6.0) == (np.float32(6 / 255), -128, 6 / 255)  # float32 in the file, double for biases
    scale, zp, _ = nudged(-1.0, 1.0)
    assert scale == np.float32(2 / 255) and zp == 0  # -128 + 127.5 rounds to even
    assert nudged(0.5, 2.0)[1] == -128  # the range is widened to hold 0


def test_a_layer_without_an_integer_version_is_named():
    i = L.Input((8, 8, 3))
    a = L.ReLU(6.0)(L.Conv2D(4, 3, padding="same", name="a")(i))
    b = L.ReLU(6.0)(L.Conv2D(4, 3, padding="same", name="b")(a))
    model = keras.Model(i, L.Add(name="residual")([a, b]))
    qat = quantize_model(model, default_plan(model, 4, keep_8bit=()))
    with pytest.raises(NotEmulated, match="has not seen data"):
        IntegerModel(qat)
    qat.compile("adam", "mse")
    qat.fit(np.random.default_rng(0).random((8, 8, 8, 3)), np.zeros((8, 8, 8, 4)), epochs=1, verbose=0)
    with pytest.raises(NotEmulated, match="residual"):
        IntegerModel(qat)
