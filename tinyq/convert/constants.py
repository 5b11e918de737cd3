"""Constant channels keep their bias in the file: a dead channel's step is raised until its int32 bias fits.

A dead channel kept for its bias (:mod:`tinyq.prune`: zero weights, a ReLU passing a positive
bias, so a constant ``relu(b)``) trains with a step of ~1e-9, so that whatever integer a table
gives its weights moves no output (:mod:`tinyq.convert.lut` lets it share the layer's 2-bit
table). The converter stores biases as int32 in units of ``input scale x weight step``:
``b / (s_in * 1e-9)`` overflows for any ``b`` above ~0.1 and saturates at ``2^31 - 1``, so the
file would compute a smaller constant than Keras. Here each such channel's step becomes
``|b| / (s_in * 2^30)``: its bias is stored as ``+-2^30``, exact to 1e-9 of itself, and the
weight step stays small enough (one output step is ~2^30 * s_out / |b| accumulator units)
for the shared table's smallest level to stay far below an output step.
"""
from __future__ import annotations

import numpy as np

from tinyq.tflite.flatbuffer import Flatbuffer, int_values

FIT = 2 ** 30  # the stored bias of a refitted channel: half of int32, room for the accumulator


def dead_channels(values: np.ndarray, axis: int) -> np.ndarray:
    """Per channel along ``axis`` of a weight tensor's integers: True where every integer is 0."""
    return ~np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1).any(axis=1)


def fit_constant_biases(data: bytes, fb: Flatbuffer, biases: dict[int, np.ndarray]) -> tuple[bytes, int]:
    """``data`` with the step of every all-zero weight channel whose int32 bias cannot hold its
    float bias raised until it can; ``biases``: {weight tensor index: the layer's float bias}.
    Returns the new bytes and how many channels changed."""
    from tinyq.tflite.edit import aligned, editor

    ops = fb.weight_tensors()
    fixes = []
    for index, bias in biases.items():
        op, w = ops[index], fb.tensors[index]
        if len(op.inputs) < 3 or op.inputs[2] < 0 or w.scales.size != bias.size or w.scales.size < 2:
            continue
        s_in = float(fb.tensors[op.inputs[0]].scales[0])
        axis = w.quantized_dimension
        dead = dead_channels(int_values(w), axis)
        overflow = np.abs(bias) / (s_in * w.scales.astype(np.float64)) > FIT
        channels = np.flatnonzero(dead & overflow)
        if channels.size:
            fixes.append((index, op.inputs[2], channels, bias[channels], s_in))
    if not fixes:
        return data, 0
    model = editor().read(data)
    tensors = model.subgraphs[0].tensors
    for index, bias_index, channels, b, s_in in fixes:
        steps = np.abs(b).astype(np.float64) / (s_in * FIT)
        w_scales = list(tensors[index].quantization.scales)
        stored = np.frombuffer(tensors[bias_index].buffer.data, np.int32).copy()
        for c, step, value in zip(channels, steps, b):
            w_scales[c] = float(step)
            stored[c] = int(np.round(value / (s_in * step)))
        tensors[index].quantization.scales = w_scales
        bq = tensors[bias_index].quantization
        if bq is not None and isinstance(bq.scales, list) and len(bq.scales) == len(w_scales):
            bq.scales = [s_in * s for s in w_scales]
        tensors[bias_index].buffer.data = stored.tobytes()
    return aligned(bytes(model.build())), sum(len(f[2]) for f in fixes)


def center_constant_biases(data: bytes, fb: Flatbuffer, tensors: list[int]) -> tuple[bytes, int]:
    """``data`` with the int32 bias of every all-zero channel of ``tensors`` moved to the middle of
    the accumulator interval that requantizes to the same output. Returns the new bytes and how many
    channels changed.

    A shared 2-bit value table has no 0 (:func:`tinyq.convert.lut.shared_levels`): a dead channel
    decodes to the smallest level times its ~4e-9 step and its constant output gains an
    accumulator term ``sum(w x)`` of some 1e-3 output steps. Where the constant lay that close to
    a rounding boundary it moved by a step on some images. With ``acc = round(k / M)`` for the output ``k = MBQM(bias, M)``, the term
    must reach half a step to move it; without it the channel computes ``k`` as before, so the
    file still equals training's integer arithmetic (:mod:`tinyq.integer`).
    """
    from tinyq.tflite.edit import aligned, editor
    from tinyq.fixedpoint import multiply_by_quantized_multiplier as mbqm
    from tinyq.fixedpoint import quantize_multiplier

    ops = fb.weight_tensors()
    fixes = []
    for index in tensors:
        op, w = ops[index], fb.tensors[index]
        if len(op.inputs) < 3 or op.inputs[2] < 0 or w.scales.size < 2:
            continue
        dead = dead_channels(int_values(w), w.quantized_dimension)
        if not dead.any():
            continue
        bias = np.frombuffer(fb.tensors[op.inputs[2]].data, np.int32).astype(np.int64)
        s_in, s_out = (np.float64(fb.tensors[t].scales[0]) for t in (op.inputs[0], op.outputs[0]))
        # the kernels' multiplier: float32 scales multiplied in double (TFLM's effective_output_scale)
        q, shift = quantize_multiplier(s_in * w.scales.astype(np.float64) / s_out)
        k = mbqm(bias, q, shift)
        with np.errstate(divide="ignore", invalid="ignore"):  # q = 0 (a multiplier under 2^-31): kept as is
            centered = np.clip(np.round(k / (q * np.exp2(shift.astype(np.float64) - 31))), -(2 ** 31), 2 ** 31 - 1)
        centered = np.where(np.isfinite(centered), centered, bias).astype(np.int64)
        keep = dead & (q > 0) & (mbqm(centered, q, shift) == k) & (centered != bias)
        if keep.any():
            fixes.append((op.inputs[2], np.where(keep, centered, bias)))
    if not fixes:
        return data, 0
    model = editor().read(data)
    for bias_index, stored in fixes:
        model.subgraphs[0].tensors[bias_index].buffer.data = stored.astype(np.int32).tobytes()
    changed = sum(int((stored != np.frombuffer(fb.tensors[b].data, np.int32)).sum()) for b, stored in fixes)
    return aligned(bytes(model.build())), changed
