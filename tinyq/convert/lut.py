"""2-bit weights for TFLM: LUT compression with tflite-micro's compression library.

Each 2-bit tensor (INT8 holding at most 4 values per channel) becomes 2-bit indices and value
tables; TFLM's DECODE operator expands it into the arena before the layer runs, and the
decoded tensor keeps the filter's per-channel scales.

``shared_tables``: one table for the whole tensor when its live channels together use at most
4 integers, as tinyq's mid-rise grid does (-126, -42, 42, 126 in every channel, the channel's scale
apart): 4 bytes instead of 4 per channel. DECODE takes its channel count from the decoded
tensor's scales and steps its table pointer by the header's channel stride once per channel
(tflite-micro ``decode_state_lut.cc``); the library writes the table length there, so a
shared table gets stride 0. A dead channel (every integer 0, a step of ~1e-9, kept because its
ReLU passes a positive bias) has no 0 in the shared table: it takes the table's smallest
level, a weight of about 1e-9 that moves no int8 output. That is checked, not assumed:
:func:`tinyq.convert.converter.convert` keeps the shared file only when TFLM's outputs equal
the per-channel file's on the calibration images. Per-channel tables are along axis 0 for
CONV_2D / FULLY_CONNECTED and axis 3 for DEPTHWISE_CONV_2D.
"""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np

from tinyq.tflite.flatbuffer import DECODE_OPS, Flatbuffer
from tinyq.errors import TinyqError

DCM_BYTES = 16  # the decode common metadata header; the value tables follow it
DCM_STRIDE = 6  # its byte holding the value table channel stride (elements per channel)


def shared_levels(values: np.ndarray, axis: int, bits: int) -> np.ndarray | None:
    """``values`` (int8) with dead channels set to the smallest level, if one table of ``2^bits``
    serves every channel; else None."""
    rows = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    dead = ~rows.any(axis=1)
    levels = np.unique(rows[~dead])
    if dead.all() or len(levels) > 1 << bits:
        return None
    if dead.any() and 0 not in levels:
        rows = rows.copy()
        rows[dead] = levels[np.argmin(np.abs(levels))]
        shape = np.moveaxis(values, axis, 0).shape
        return np.moveaxis(rows.reshape(shape), 0, axis)
    return values


def compress(data: bytes, fb: Flatbuffer, tensors: dict[int, str], bits: int = 2,
             shared_tables: bool = True) -> bytes:
    """LUT-compress ``tensors`` ({index: layer name}) of ``data`` to ``bits``-bit indices.

    ``shared_tables=False``: one value table per channel (exact whatever the channels hold).
    """
    from tflite_micro import compression
    from tflite_micro.tensorflow.lite.micro.compression import spec

    ops = fb.weight_tensors()
    specs, edits = [], {}
    for index, name in sorted(tensors.items()):
        t = fb.tensors[index]
        values = t.data.view(np.int8).reshape(t.shape)
        axis = 3 if ops[index].name == "DEPTHWISE_CONV_2D" else 0
        shared = shared_levels(values, axis, bits) if shared_tables and t.scales.size > 1 else None
        if shared is not None:
            mode, distinct = spec.PerTensor(), len(np.unique(shared))
            if shared is not values:
                edits[index] = shared
        elif t.scales.size > 1:
            mode = spec.PerChannel(axis=axis)
            distinct = max(len(np.unique(row)) for row in np.moveaxis(values, axis, 0).reshape(t.shape[axis], -1))
        else:
            mode, distinct = spec.PerTensor(), len(np.unique(values))
        if distinct > 1 << bits:
            raise AssertionError(f"layer {name!r} has {distinct} values per channel, more than {bits} bits hold")
        specs.append(spec.Tensor(subgraph=0, tensor=index,
                                 compression=[spec.LookUpTableCompression(index_bitwidth=bits, mode=mode)]))
    # The library prints a note when a channel needs fewer index bits; not a problem here.
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            compressed = bytes(compression.compress(_edited(data, edits) if edits else data, specs))
            return _shared_stride(compressed) if shared_tables else compressed
        except Exception as e:
            raise TinyqError(f"TFLM LUT compression failed: {e}") from None


def _edited(data: bytes, arrays: dict[int, np.ndarray]) -> bytes:
    """``data`` with the first subgraph's tensors ``arrays`` ({index: int8 array}) replaced."""
    from tinyq.tflite.edit import aligned, editor

    model = editor().read(data)
    for index, array in arrays.items():
        tensor = model.subgraphs[0].tensors[index]
        tensor.buffer.data = np.ascontiguousarray(array, np.int8).tobytes()
    return aligned(bytes(model.build()))


def _shared_stride(data: bytes) -> bytes:
    """Stride 0 on every DECODE table that alone serves a per-channel decoded tensor."""
    from tinyq.tflite.edit import aligned, editor

    model = editor().read(data)
    changed = False
    for op in model.subgraphs[0].operators:
        if not (op.opcode_name in DECODE_OPS or (op.custom_code or "") in DECODE_OPS):
            continue
        # DECODE takes (encoded, ancillary) pairs, one output each
        for ancillary, out in zip(op.inputs[1::2], op.outputs):
            q = out.quantization
            channels = len(q.scales) if q is not None and isinstance(q.scales, list) else 1
            table = bytearray(ancillary.buffer.data)
            if channels > 1 and len(table) > DCM_STRIDE and len(table) == DCM_BYTES + table[DCM_STRIDE]:
                table[DCM_STRIDE] = 0
                ancillary.buffer.data = bytes(table)
                changed = True
    return aligned(bytes(model.build())) if changed else data
