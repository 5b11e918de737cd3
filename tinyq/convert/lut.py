"""2-bit weights for TFLM: LUT compression with tflite-micro's compression library.

Each 2-bit tensor (INT8 holding at most 4 values per channel) becomes 2-bit indices and a
value table per channel (axis 0 for CONV_2D / FULLY_CONNECTED, axis 3 for
DEPTHWISE_CONV_2D; per tensor when the tensor has one scale); TFLM's DECODE operator
expands it into the arena before the layer runs.
"""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np

from tinyq.convert.flatbuffer import Flatbuffer
from tinyq.errors import TinyqError


def compress(data: bytes, fb: Flatbuffer, tensors: dict[int, str], bits: int = 2) -> bytes:
    """LUT-compress ``tensors`` ({index: layer name}) of ``data`` to ``bits``-bit indices."""
    from tflite_micro import compression
    from tflite_micro.tensorflow.lite.micro.compression import spec

    ops = fb.weight_tensors()
    specs = []
    for index, name in sorted(tensors.items()):
        t = fb.tensors[index]
        if t.scales.size > 1:
            axis = 3 if ops[index].name == "DEPTHWISE_CONV_2D" else 0
            mode = spec.PerChannel(axis=axis)
            per = np.moveaxis(t.data.view(np.int8).reshape(t.shape), axis, 0).reshape(t.shape[axis], -1)
            distinct = max(len(np.unique(row)) for row in per)
        else:
            mode = spec.PerTensor()
            distinct = len(np.unique(t.data.view(np.int8)))
        if distinct > 1 << bits:
            raise AssertionError(f"layer {name!r} has {distinct} values per channel, more than {bits} bits hold")
        specs.append(spec.Tensor(subgraph=0, tensor=index,
                                 compression=[spec.LookUpTableCompression(index_bitwidth=bits, mode=mode)]))
    # The library prints a note when a channel needs fewer index bits; not a problem here.
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return bytes(compression.compress(data, specs))
        except Exception as e:
            raise TinyqError(f"TFLM LUT compression failed: {e}") from None
