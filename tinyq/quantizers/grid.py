"""The integer grids weights are quantized onto, and how the converter stores them.

A b-bit weight grid is a set of integer codes ``lo..hi`` and an ``offset``; the weight a
code stands for is ``(code + offset) * scale``, one ``scale`` per output channel.

- b >= 3: mid-tread, narrow range: codes ``-(2^(b-1)-1) .. 2^(b-1)-1``, offset 0 (zero is a
  level; the range is symmetric as TFLite's int8/int4 kernels require).
- b == 2: mid-rise, ``{-1.5, -0.5, 0.5, 1.5} * scale`` (codes -2..1, offset 0.5): all four
  codes are used, as in DoReFa / SAT, instead of the three a narrow mid-tread grid keeps.

The *container* is the integer type the converter writes: INT4 for b in {3, 4}, INT8
otherwise. In the container a level is the integer ``(code + offset) * step_ratio``, spread
as wide as the container allows (see ``Grid.step_ratio``): 2-bit levels are the int8 values
-126, -42, 42, 126 in steps of ``scale / 84``. 2-bit tensors are then LUT-compressed to
2-bit indices for TFLM (see ``tinyq.convert.lut``), so the spread costs no byte.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Grid:
    bits: int
    lo: int
    hi: int
    offset: float
    container_bits: int

    @property
    def step_ratio(self) -> int:
        """Container integers per grid step: the widest spread that keeps every level in range.

        ``ratio = base * (container_max // (top_level * base))``, ``base = 2`` for the mid-rise
        grid (odd levels), else 1: 2-bit levels are -126, -42, 42, 126 in INT8 (-6, -2, 2, 6 in
        INT4), 4- and 8-bit grids fill their containers as before.

        Why spread: TFLite and TFLM requantize an int32 accumulator by ``M = s_in * s_w / s_out``
        with two roundings (``SaturatingRoundingDoublingHighMul``, then
        ``RoundingDivideByPOT``). The first keeps whole units of ``2^floor(log2 M)`` output
        steps, so with few-bit integers (small accumulators, M up to 0.4) outputs came out up to
        a quarter step high against round(acc * M). Larger integers make the accumulator
        large and M small, and the rounding true; the value tables cost the same.
        """
        base = 2 if self.offset else 1
        return base * (self.container_max // round(self.top_level * base))

    @property
    def container_max(self) -> int:
        """Largest container integer: the narrow signed range is -max..max."""
        return 2 ** (self.container_bits - 1) - 1

    @property
    def top_level(self) -> float:
        """Largest |level| in units of scale: where the clipping range ends."""
        return max(abs(self.lo + self.offset), abs(self.hi + self.offset))

    @property
    def levels(self) -> list[float]:
        return [c + self.offset for c in range(self.lo, self.hi + 1)]


def container_bits(bits: int, storage: int | None = None) -> int:
    """The converter's integer type for a ``bits`` grid: INT4 for 3-4 bits, INT8 otherwise.

    ``storage`` widens it losslessly: 8 stores everything as INT8 (for runtimes without
    INT4), 4 stores 2-bit grids as INT4 instead of LUT-compressed INT8.
    """
    if storage == 8 or bits > 4:
        return 8
    if storage == 4 or bits in (3, 4):
        return 4
    return 8


def grid(bits: int, storage: int | None = None) -> Grid:
    """The grid for ``bits`` (2..8), stored per :func:`container_bits`."""
    c = container_bits(bits, storage)
    if bits == 2:
        return Grid(bits=2, lo=-2, hi=1, offset=0.5, container_bits=c)
    n = 2 ** (bits - 1) - 1
    return Grid(bits=bits, lo=-n, hi=n, offset=0.0, container_bits=c)
