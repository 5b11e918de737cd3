"""TFLite's fixed-point integer arithmetic in numpy: requantization and the int8 softmax.

What TFLM's and LiteRT's reference int8 kernels compute, element for element (all values as
int64 arrays holding int32 quantities). Used by :mod:`tinyq.integer` to run a Keras QAT model
as the integer kernels run its file.

- :func:`quantize_multiplier`: a real multiplier ``M`` as ``q * 2^(shift - 31)``, ``q`` in
  ``[2^30, 2^31)`` (``QuantizeMultiplier``).
- :func:`multiply_by_quantized_multiplier`: ``x * M`` rounded twice, as the kernels do:
  ``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x * 2^left, q), right)``.
- :func:`softmax_int8`: the reference int8 softmax (gemmlowp fixed point: ``exp`` on
  ``[-1/4, 0)`` by a Taylor series and a barrel shifter, ``1 / sum`` by Newton-Raphson).
"""
from __future__ import annotations

import numpy as np

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def _i64(x) -> np.ndarray:
    return np.asarray(x, np.int64)


def _div_trunc(a: np.ndarray, b: int) -> np.ndarray:
    """C integer division (towards zero)."""
    return np.where(a >= 0, a // b, -((-a) // b))


def quantize_multiplier(m) -> tuple[np.ndarray, np.ndarray]:
    """``(q, shift)`` with ``m = q * 2^(shift - 31)``, ``q`` an int32 in ``[2^30, 2^31)`` (0 for ``m = 0``)."""
    frac, shift = np.frexp(np.asarray(m, np.float64))
    q = np.round(frac * (1 << 31)).astype(np.int64)
    carry = q == (1 << 31)
    q, shift = np.where(carry, q // 2, q), np.where(carry, shift + 1, shift).astype(np.int64)
    tiny = shift < -31
    return np.where(tiny, 0, q), np.where(tiny, 0, shift)


def srdhm(a, b) -> np.ndarray:
    """SaturatingRoundingDoublingHighMul: ``a * b / 2^31`` to the nearest integer, ties upwards
    (1.5 -> 2, -1.5 -> -1); int32 in and out, ``(-2^31) * (-2^31)`` saturating to ``2^31 - 1``."""
    a, b = _i64(a), _i64(b)
    ab = a * b
    q = _div_trunc(ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30)), 1 << 31)
    return np.where((a == b) & (a == INT32_MIN), INT32_MAX, q)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """``x / 2^exponent`` rounded to nearest, ties away from zero (RoundingDivideByPOT)."""
    x, exponent = _i64(x), _i64(exponent)
    mask = (np.int64(1) << exponent) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + ((x & mask) > threshold)


def multiply_by_quantized_multiplier(x, q, shift) -> np.ndarray:
    """``x * q * 2^(shift - 31)`` as the kernels round it: first to an integer, then by the power of two."""
    shift = _i64(shift)
    return rounding_divide_by_pot(srdhm(_i64(x) << np.maximum(shift, 0), q), np.maximum(-shift, 0))


def _half_away(v: np.ndarray) -> np.ndarray:
    return (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int64)


def multiply_rounded_once(x, q, shift) -> np.ndarray:
    """``x * q * 2^(shift - 31)`` rounded once, half away from zero (what a float requantization
    computes; not what the int8 kernels do, see :func:`multiply_by_quantized_multiplier`)."""
    return _half_away(np.asarray(x, np.float64) * np.asarray(q, np.float64)
                      * np.power(2.0, np.asarray(shift, np.float64) - 31))


def multiply_real_by_quantized_multiplier(x, q, shift) -> np.ndarray:
    """:func:`multiply_by_quantized_multiplier`'s two roundings on a real ``x``: ``x 2^left q / 2^31``
    rounded (ties up), then divided by ``2^right`` rounded half away from zero."""
    shift = np.asarray(shift, np.float64)
    high = np.floor(np.asarray(x, np.float64) * np.power(2.0, np.maximum(shift, 0)) * np.asarray(q, np.float64)
                    / 2.0 ** 31 + 0.5)
    return _half_away(high / np.power(2.0, np.maximum(-shift, 0)))


def _saturate(x: np.ndarray) -> np.ndarray:
    return np.clip(x, INT32_MIN, INT32_MAX)


def _mul_pot(x: np.ndarray, exponent: int) -> np.ndarray:
    """SaturatingRoundingMultiplyByPOT."""
    return _saturate(x << exponent) if exponent >= 0 else rounding_divide_by_pot(x, -exponent)


def _exp_on_interval(a: np.ndarray) -> np.ndarray:
    """``exp(a)`` for ``a`` in ``[-1/4, 0)``, Q0.31 in and out: Taylor series around -1/8."""
    x = a + (1 << 28)
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    x4_over_4 = rounding_divide_by_pot(x4, 2)
    poly = rounding_divide_by_pot(srdhm(x4_over_4 + x3, 715827883) + x2, 1)  # 715827883: 1/3
    constant = 1895147668  # exp(-1/8)
    return constant + srdhm(constant, x + poly)


# (bit of the remainder in Q5.26, exp(-2^k) in Q0.31) for k = -2 .. 4
_BARREL = [(26 + k, m) for k, m in zip(range(-2, 5), (1672461947, 1302514674, 790015084, 290630308,
                                                        39332535, 720401, 242))]


def _exp_on_negative_values(a: np.ndarray) -> np.ndarray:
    """``exp(a)`` for ``a <= 0`` in Q5.26, result in Q0.31 (gemmlowp ``exp_on_negative_values``)."""
    quarter = 1 << 24
    a_mod = (a & (quarter - 1)) - quarter
    result = _exp_on_interval(_mul_pot(a_mod, 5))
    remainder = a_mod - a
    for bit, multiplier in _BARREL:
        result = np.where(remainder & (1 << bit), srdhm(result, multiplier), result)
    return np.where(a == 0, INT32_MAX, result)


def _one_over_one_plus_x(a: np.ndarray) -> np.ndarray:
    """``1 / (1 + a)`` for ``a`` in ``[0, 1)``, Q0.31 in, Q0.31 out: three Newton-Raphson steps in Q2.29."""
    half_denominator = _div_trunc(a + INT32_MAX + np.where(a + INT32_MAX >= 0, 1, -1), 2)
    x = 1515870810 + srdhm(half_denominator, -1010580540)  # 48/17 - 32/17 d
    for _ in range(3):
        one_minus = (1 << 29) - srdhm(half_denominator, x)
        x = x + _mul_pot(srdhm(x, one_minus), 2)
    return _mul_pot(x, 1)


def _clz32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64) & 0xFFFFFFFF
    bits = np.zeros(x.shape, np.int64)
    for k in range(32):
        bits = np.where(x >= (np.uint64(1) << np.uint64(k)), k + 1, bits)
    return 32 - bits


def softmax_params(input_scale: float, beta: float = 1.0) -> tuple[int, int, int]:
    """``(input_multiplier, input_left_shift, diff_min)`` of the int8 softmax (PreprocessSoftmaxScaling, 5 integer bits)."""
    real = min(beta * float(input_scale) * (1 << 26), float(INT32_MAX))
    q, shift = quantize_multiplier(real)
    radius = np.floor(31.0 * (1 << 26) / (1 << int(shift)))
    return int(q), int(shift), -int(radius)


def softmax_int8(x, input_scale: float, beta: float = 1.0) -> np.ndarray:
    """The int8 softmax over the last axis, output scale 1/256 and zero point -128, as TFLM computes it."""
    return softmax_int8_raw(x, *softmax_params(input_scale, beta))


def softmax_int8_raw(x, q: int, left: int, diff_min: int) -> np.ndarray:
    """:func:`softmax_int8` from its parameters (:func:`softmax_params`)."""
    x = _i64(x)
    diff = x - x.max(axis=-1, keepdims=True)
    used = diff >= diff_min
    exps = _exp_on_negative_values(srdhm(diff << left, q))
    total = np.where(used, rounding_divide_by_pot(exps, 12), 0).sum(axis=-1, keepdims=True)  # Q12.19
    headroom = _clz32(total)
    over_unit = 12 - headroom
    shifted = ((total.astype(np.uint64) << headroom.astype(np.uint64)) & 0xFFFFFFFF).astype(np.int64) - (1 << 31)
    scale = _one_over_one_plus_x(shifted)
    out = rounding_divide_by_pot(srdhm(scale, exps), over_unit + 31 - 8) - 128
    return np.where(used, np.clip(out, -128, 127), -128)
