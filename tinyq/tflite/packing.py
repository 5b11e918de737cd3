"""Bit packing, pure numpy. Two layouts, the ones the runtimes read.

- INT4 (TFLite packed int4 tensors): two signed 4-bit values per byte, element ``2i`` in
  the low nibble and ``2i + 1`` in the high nibble, two's complement; an odd count leaves the
  last high nibble 0.
- LUT indices (TFLM compression, DECODE): unsigned ``bits``-wide fields, most significant
  bit first, filling each byte from its high bit down, elements in row-major order; the
  tail of the last byte is 0.
"""
from __future__ import annotations

import numpy as np


def pack_int4(values: np.ndarray) -> bytes:
    v = np.asarray(values).ravel().astype(np.int64)
    if v.size and (v.min() < -8 or v.max() > 7):
        raise ValueError("int4 values must lie in -8..7")
    nibbles = (v & 0xF).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()


def unpack_int4(data: bytes, count: int) -> np.ndarray:
    b = np.frombuffer(bytes(data), np.uint8)
    nibbles = np.empty(b.size * 2, np.int8)
    nibbles[0::2] = (b & 0xF).astype(np.int8)
    nibbles[1::2] = (b >> 4).astype(np.int8)
    nibbles = np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.int8)
    if count > nibbles.size:
        raise ValueError(f"{len(data)} bytes hold {nibbles.size} int4 values, not {count}")
    return nibbles[:count]


def pack_indices(indices: np.ndarray, bits: int) -> bytes:
    idx = np.asarray(indices).ravel().astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= 1 << bits):
        raise ValueError(f"indices must lie in 0..{(1 << bits) - 1}")
    bit_matrix = ((idx[:, None] >> np.arange(bits - 1, -1, -1)) & 1).astype(np.uint8)
    return np.packbits(bit_matrix.ravel()).tobytes()


def unpack_indices(data: bytes, bits: int, count: int) -> np.ndarray:
    flat = np.unpackbits(np.frombuffer(bytes(data), np.uint8))
    if count * bits > flat.size:
        raise ValueError(f"{len(data)} bytes hold fewer than {count} {bits}-bit indices")
    fields = flat[: count * bits].reshape(count, bits).astype(np.int64)
    return (fields << np.arange(bits - 1, -1, -1)).sum(axis=1)
