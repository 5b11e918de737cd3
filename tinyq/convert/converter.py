"""Keras QAT model -> full-integer TFLite, weights stored by bits, verified against training.

Storage by weight bits: 8 -> INT8; 3-4 -> packed INT4; 2 -> INT8 holding 4 values per
channel, then TFLM LUT compression (2-bit indices, per-channel value tables, DECODE op).
"""
from __future__ import annotations

import re
import time
from typing import Callable

import numpy as np

from tinyq._tf import tf
from tinyq.contract import InputContract
from tinyq.convert import lut
from tinyq.convert.constants import center_constant_biases, fit_constant_biases
from tinyq.errors import TinyqError
from tinyq.logs import captured_fd2
from tinyq.qat import quantized_layers, with_storage
from tinyq.runtimes import model_input, tflm_outputs
from tinyq.runtimes.guard import verdict
from tinyq.tflite import flatbuffer

STORAGE_BITS = (2, 4, 8)
_LAYER_IN_NAME = re.compile(r"(?:^|/)quant_([^/;]+)/")


def storage_of(qat, fb: flatbuffer.Flatbuffer) -> int | None:
    """The storage width ``fb`` was converted with (``tinyq convert RUN --bits``), from its tensor types.

    Only 2-bit grids in INT4 (``--bits 4``) and 3-4-bit grids in INT8 (``--bits 8``) hold
    other integers than the default file: a 2-bit grid in INT8 is what the LUT decodes to.
    """
    bits = {quantizer.bits for _, _, quantizer, _ in quantized_layers(qat)}
    types = {fb.tensors[t].type for t in fb.weight_tensors()}
    if set(flatbuffer.DECODE_OPS) & set(fb.op_names):
        return None
    if 2 in bits and "INT4" in types:
        return 4
    if bits & {3, 4} and "INT4" not in types:
        return 8
    return None


def to_tflite(qat, representative: np.ndarray, contract: InputContract, storage_bits: int | None = None,
              allow_float: bool = False) -> bytes:
    """Full-integer conversion: int8 activations, int8 input and output.

    ``storage_bits`` widens the weights' containers (:func:`tinyq.qat.with_storage`);
    ``allow_float``: ops without an int8 kernel stay float (QUANTIZE / DEQUANTIZE around them).
    """
    sample = contract.to_float(representative[:200])

    def rep():
        for x in sample:
            yield [x[None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(with_storage(qat, storage_bits))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = rep
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8] + (
        [tf.lite.OpsSet.TFLITE_BUILTINS] if allow_float else [])
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    try:
        with captured_fd2():  # the converter's C++ progress lines are not for users
            return bytes(converter.convert())
    except Exception as e:  # the converter's MLIR errors are long; keep their first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TinyqError(f"the TFLite converter rejected the model: {first}") from None


def layer_of(tensor_name: str) -> str | None:
    """The Keras layer a converted weight tensor came from (TFMOT names it ``quant_<layer>``)."""
    m = _LAYER_IN_NAME.search(tensor_name)
    return m.group(1) if m else None


def converter_steps(quantizer, qvars) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel weight scales the converter uses for ``quantizer``, to the bit: the float32
    ones it writes, and the float64 ones it quantizes the int32 biases with.

    TensorFlow computes the container step ``s / ratio`` as ``s * (1 / ratio)`` (grappler turns
    the division by a constant into a multiplication; the last bit can differ from numpy's
    division, which moves a requantization multiplier and, rarely, an output); the converter reads the range ``+-step * max`` back as ``range / max`` in double,
    raises a range under 1e-6 (a dead channel's) to 1e-6, and divides the bias by that double,
    not by the float32 it stores (a bias integer near a half moves by one otherwise).
    """
    g = quantizer.grid
    s = (np.abs(qvars["scale"].numpy()) + np.float32(1e-12)).astype(np.float32)
    step = (s * np.float32(1.0 / g.step_ratio)).astype(np.float32)
    bound = (step * np.float32(g.container_max)).astype(np.float32)
    exact = bound.astype(np.float64) / g.container_max
    exact = np.atleast_1d(np.where(s < quantizer.dead_scale, np.maximum(exact, 1e-6 / (2 * g.container_max)), exact))
    return exact.astype(np.float32), exact


def kernel_integers(weight, quantizer, qvars) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kernel's container integers (Keras layout, float64) and the scales the converter uses
    for them (:func:`converter_steps`: stored float32, and float64 for the biases)."""
    w_q = quantizer(weight, False, qvars).numpy().astype(np.float64)
    axis = quantizer.kernel_axis
    ints = np.round(np.moveaxis(w_q, axis, -1) / _keras_steps(quantizer, qvars))
    return (np.moveaxis(ints, -1, axis), *converter_steps(quantizer, qvars))


def _keras_steps(quantizer, qvars) -> np.ndarray:
    """The per-channel container steps training quantized with, ``|s| / step_ratio`` (float64)."""
    return (np.abs(qvars["scale"].numpy()) / quantizer.grid.step_ratio).astype(np.float64)


def expected_integers(qat) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Per quantized layer: the integers and per-channel steps training used, in TFLite layout."""
    out = {}
    for layer, weight, quantizer, qvars in quantized_layers(qat):
        ints = kernel_integers(weight, quantizer, qvars)[0]
        # Keras channels-last -> TFLite channels-first: [h,w,in,out] -> [out,h,w,in], [in,out] -> [out,in]
        tfl = np.moveaxis(np.moveaxis(ints, quantizer.kernel_axis, -1), -1, 0).astype(np.int64)
        if tfl.ndim == 4 and quantizer.channel_axis == 2:  # depthwise: channels are TFLite's last axis
            tfl = np.moveaxis(tfl, 0, -1)
        out[layer.layer.name] = (tfl, _keras_steps(quantizer, qvars), quantizer.bits)
    return out


def verify(qat, fb: flatbuffer.Flatbuffer) -> dict[int, tuple[str, int]]:
    """Check every weight tensor holds exactly the integers training used.

    Returns ``{tensor index: (layer name, weight bits)}``.
    """
    expected = expected_integers(qat)
    dead_steps = {layer.layer.name: q.dead_scale / q.grid.step_ratio for layer, _, q, _ in quantized_layers(qat)}
    found: dict[int, tuple[str, int]] = {}
    for index in fb.weight_tensors():
        t = fb.tensors[index]
        name = layer_of(t.name)
        if name not in expected:
            continue
        ints, step, bits = expected[name]
        got = flatbuffer.int_values(t)
        differ = AssertionError(f"converted weights of layer {name!r} differ from the ones training used")
        if got.size != ints.size:
            raise differ
        # one row per channel; a per-tensor weight is one channel
        axis = t.quantized_dimension if step.size > 1 else 0
        g = np.moveaxis(got.reshape(ints.shape), axis, 0).reshape(step.size, -1)
        e = np.moveaxis(ints, axis, 0).reshape(step.size, -1)
        scales = t.scales if t.scales.size == step.size else np.full(step.size, t.scales[0])
        # A channel under its quantizer's dead_scale computes with exactly 0 (WeightQuantizer.__call__); the
        # converter raises tiny scales to a floor, so such a channel passes by value as well as by integer and scale.
        exact = (g == e).all(axis=1) & np.isclose(scales, step, rtol=1e-5)
        tiny = np.all(np.abs(g * scales[:, None]) < 1e-6, axis=1)
        live = step >= dead_steps[name]
        if not (exact[live].all() and (exact | tiny)[~live].all()):
            raise differ
        found[index] = (name, bits)
    missing = set(expected) - {n for n, _ in found.values()}
    if missing:
        raise AssertionError(f"no weight tensor found for quantized layers {sorted(missing)}")
    return found


def _biases(qat, layers: dict[int, tuple[str, int]]) -> dict[int, np.ndarray]:
    """{weight tensor index: the float bias of its layer}, for the layers verified in the file."""
    bias = {layer.layer.name: layer.layer.bias.numpy().astype(np.float64)
            for layer, _, _, _ in quantized_layers(qat) if getattr(layer.layer, "bias", None) is not None}
    return {index: bias[name] for index, (name, _) in layers.items() if name in bias}


def convert(qat, representative: np.ndarray, contract: InputContract, storage_bits: int | None = None,
            log: Callable[[str], None] = lambda m: None, allow_float: bool = False) -> bytes:
    """Convert, verify the integers against training, LUT-compress 2-bit tensors (not compacted)."""
    if storage_bits is not None and storage_bits not in STORAGE_BITS:
        raise TinyqError(f"unsupported storage bits {storage_bits}: expected one of {', '.join(map(str, STORAGE_BITS))}")
    t0 = time.time()
    qat = with_storage(qat, storage_bits)  # the integers as stored: a wider container spreads them differently
    data = to_tflite(qat, representative, contract, allow_float=allow_float)
    # every check below runs TFLM in this process: a file TFLM aborts or hangs on must not take tinyq down
    problem = verdict(data)
    if problem:
        raise TinyqError(f"TFLM cannot run the converted file: {problem}. An untrained or degenerate model can give "
                         "a layer (often the softmax) a range its kernel refuses: train the float model first, or "
                         "report it with the model")
    fb = flatbuffer.parse(data)
    float_ops = fb.float_ops()
    if float_ops:
        log(f"warning: float ops in the file (no int8 kernel; slower, need float support on the device): "
            f"{', '.join(float_ops)}")
    layers = verify(qat, fb)
    log(f"convert: {len(data):,} bytes in {time.time() - t0:.1f}s; " + (
        f"weights of {len(layers)} layers verified equal to training's integers" if layers
        else "a float model: the converter chose the int8 weights (post-training quantization)"))
    data, refitted = fit_constant_biases(data, fb, _biases(qat, layers))
    if refitted:
        fb = flatbuffer.parse(data)
        log(f"convert: {refitted} constant channels (zero weights, kept for their bias) stored with a step "
            "their int32 bias fits under")
    # a wider storage asked for (--bits 4 or 8: runtimes without DECODE) keeps the plain tensors
    two_bit = {i: name for i, (name, bits) in layers.items()
               if bits == 2 and storage_bits in (None, 2) and fb.tensors[i].type == "INT8"}
    if two_bit:
        data = compress_2bit(data, fb, two_bit, representative, contract, log)
    return data


def compress_2bit(data: bytes, fb: flatbuffer.Flatbuffer, tensors: dict[int, str], pixels: np.ndarray,
                  contract: InputContract, log: Callable[[str], None] = lambda m: None, n: int = 32) -> bytes:
    """LUT-compress the 2-bit ``tensors``, with shared value tables where TFLM's outputs on the
    first ``n`` of ``pixels`` equal those of per-channel tables (see :mod:`tinyq.convert.lut`)."""
    exact = lut.compress(data, fb, tensors, shared_tables=False)
    centered, _ = center_constant_biases(data, fb, list(tensors))  # a shared table gives dead channels weights
    shared = lut.compress(centered, flatbuffer.parse(centered), tensors)
    chosen, kept = exact, "per-channel value tables"
    if shared != exact:
        x = model_input(fb, pixels[:n], contract)
        if np.array_equal(tflm_outputs(shared, x), tflm_outputs(exact, x)):
            chosen, kept = shared, (f"shared value tables (-{len(exact) - len(shared):,} bytes, TFLM outputs "
                                    f"identical on {len(x)} images)")
        else:
            kept += " (shared tables rejected: TFLM outputs changed)"
    log(f"convert: {len(tensors)} 2-bit tensors LUT-compressed (TFLM DECODE), {kept}: {len(chosen):,} bytes")
    return chosen
