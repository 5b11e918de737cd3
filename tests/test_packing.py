"""Bit packing: golden bytes, round trips, and agreement with tflite-micro's own packer."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyq.tflite.packing import pack_indices, pack_int4, unpack_indices, unpack_int4


def test_int4_golden_bytes():
    # element 0 in the low nibble, element 1 in the high nibble, two's complement
    assert pack_int4([1, 2]) == bytes([0x21])
    assert pack_int4([-1, 7]) == bytes([0x7F])
    assert pack_int4([-8, -7, 3]) == bytes([0x98, 0x03])
    assert pack_int4([0, 0, 0, -1]) == bytes([0x00, 0xF0])


def test_int4_unpack_golden():
    np.testing.assert_array_equal(unpack_int4(bytes([0x98, 0x03]), 3), [-8, -7, 3])


def test_int4_rejects_out_of_range():
    with pytest.raises(ValueError):
        pack_int4([8])


def test_indices_golden_bytes():
    # 2-bit fields, most significant bit first
    assert pack_indices([0, 1, 2, 3], 2) == bytes([0b00011011])
    assert pack_indices([3, 0, 1], 2) == bytes([0b11000100])
    assert pack_indices([5, 2], 3) == bytes([0b10101000])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-8, 7), max_size=65))
def test_int4_round_trip(values):
    assert unpack_int4(pack_int4(values), len(values)).tolist() == values


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 7).flatmap(lambda b: st.tuples(st.just(b), st.lists(st.integers(0, (1 << b) - 1), max_size=70))))
def test_indices_round_trip_and_match_tflm(case):
    from tflite_micro.tensorflow.lite.micro.compression import lut

    bits, values = case
    packed = pack_indices(values, bits)
    assert packed == lut.pack_indices(np.asarray(values, np.int64), bits)
    assert unpack_indices(packed, bits, len(values)).tolist() == values
