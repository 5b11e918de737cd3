"""Compaction: a smaller flatbuffer, each step kept only if the runtimes give identical outputs.

At MobileNetV1-0.25 size most of a converted file is not weights: per-channel scales and int64
zero points (on weights, biases and DECODE outputs), tensor names and conversion metadata.
Each step below rewrites the file; :func:`compact` runs TFLM (and LiteRT where it ran the
original) on the same images before and after, and keeps the step only when every int8
output is identical and the runtime still loads the file. Rejected steps are reported with
the reason, so what TFLM reads is measured, not guessed.

- ``names``: tensor and subgraph names, signature defs and conversion metadata (TFLM reads
  none of them; the compression metadata DECODE needs is kept); the names go to a map.
- ``zero_points``: a per-channel zero-point vector whose values are all equal stored as one
  value (TFLM reads ``zero_point[0]`` for a length-1 vector).
- ``bias_quantization``: the scales and zero points of the int32 biases of convolutions
  (their per-channel kernels derive the bias scale from input and filter scales).
- ``decode_inputs``: the quantization parameters left on DECODE's inputs (2-bit indices and
  value tables); its output tensor carries the filter's scales.
- ``shape_signatures``: the converter's copy of each activation's shape with -1 for a dynamic
  batch; TFLM sizes tensors from ``shape``.
- ``dedupe``: byte-identical buffers shared, unreferenced buffers dropped.

Buffers stay 16-byte aligned: the file is re-packed with tflite-micro's aligning writer.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import numpy as np

from tinyq.errors import TinyqError
from tinyq.runtimes import litert_outputs, model_input, tflm_outputs
from tinyq.tflite import flatbuffer
from tinyq.tflite.edit import aligned, editor
from tinyq.tflite.flatbuffer import DECODE_OPS

KEEP_METADATA = ("COMPRESSION_METADATA",)
# not FULLY_CONNECTED: TFLM's prepare compares its bias scale with input * filter scale
# (kernel_util.cc: scale_diff / output_scale <= 0.02), which a missing scale passes or fails
# depending on the model's scales, so a plan measured on one model would not hold for another
BIAS_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")


def _names(model) -> None:
    for sg in model.subgraphs:
        for t in sg.tensors:
            t.name = ""
        sg.name = ""
    model.description = ""
    model._fb.signatureDefs = None
    model.metadata = {k: v for k, v in model.metadata.items() if k in KEEP_METADATA}


def _zero_points(model) -> None:
    for t in editor().iter_tensors(model):
        q = t.quantization
        if q is not None and len(q.zero_points) > 1 and len(set(q.zero_points)) == 1:
            q.zero_points = [q.zero_points[0]]


def _bias_quantization(model) -> None:
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    int32 = schema.TensorType.INT32
    for sg in model.subgraphs:
        for op in sg.operators:
            if op.opcode_name in BIAS_OPS and len(op.inputs) > 2 and op.inputs[2] is not None:
                bias = op.inputs[2]
                if bias.dtype == int32 and bias.buffer is not None:
                    bias.quantization = None
                    bias._fb.quantization = None  # the editor keeps the original when the wrapper is None


def _decode_inputs(model) -> None:
    for sg in model.subgraphs:
        for op in sg.operators:
            if op.opcode_name in DECODE_OPS or (op.custom_code or "") in DECODE_OPS:
                for t in op.inputs:
                    if t is not None and t.buffer is not None:
                        t.quantization = None
                        t._fb.quantization = None


def _shape_signatures(model) -> None:
    for t in editor().iter_tensors(model):
        t._fb.shapeSignature = None


def _dedupe(model) -> None:
    ed = editor()
    ed.dedupe_buffers(model)
    ed.prune_buffers(model)


STEPS: dict[str, Callable] = {"names": _names, "zero_points": _zero_points,
                              "bias_quantization": _bias_quantization, "decode_inputs": _decode_inputs,
                              "shape_signatures": _shape_signatures, "dedupe": _dedupe}


def tensor_names(data: bytes) -> list[str]:
    """The names of the first subgraph's tensors, by index (the map ``names`` leaves beside the file)."""
    return [t.name for t in flatbuffer.parse(data).tensors]


def apply(data: bytes, step: str) -> bytes:
    """``data`` rewritten by one step (unverified)."""
    ed = editor()
    model = ed.read(bytes(data))
    STEPS[step](model)
    with contextlib.redirect_stdout(io.StringIO()):
        return aligned(bytes(model.build()))


def _outputs(data: bytes, x: np.ndarray, litert: bool) -> dict[str, np.ndarray]:
    out = {"tflm": tflm_outputs(data, x)}
    if litert:
        out["litert"] = litert_outputs(data, x)[0]
    return out


def compact(data: bytes, x: np.ndarray, log: Callable[[str], None] = lambda m: None) -> tuple[bytes, dict]:
    """Apply every step that keeps the runtimes' outputs on ``x`` (int8 inputs) identical.

    Returns the compacted file and a record: bytes before and after, and per step its
    saving or why it was rejected.
    """
    litert = not (set(flatbuffer.DECODE_OPS) & set(flatbuffer.parse(data).op_names))
    reference = _outputs(data, x, litert)
    record = {"bytes_before": len(data), "steps": {}}
    for step in STEPS:
        try:
            candidate = apply(data, step)
            outputs = _outputs(candidate, x, litert)
        except (TinyqError, RuntimeError, ValueError) as e:
            record["steps"][step] = {"kept": False, "why": f"the runtime rejects it: {str(e).splitlines()[0][:160]}"}
            continue
        differ = [name for name, out in outputs.items() if not np.array_equal(out, reference[name])]
        if differ:
            record["steps"][step] = {"kept": False, "why": f"outputs change in {', '.join(differ)}"}
            continue
        record["steps"][step] = {"kept": True, "saved": len(data) - len(candidate)}
        data = candidate
    record["bytes_after"] = len(data)
    kept = [f"{s} -{r['saved']:,}" for s, r in record["steps"].items() if r["kept"]]
    dropped = [f"{s} ({r['why']})" for s, r in record["steps"].items() if not r["kept"]]
    log(f"compact: {record['bytes_before']:,} -> {record['bytes_after']:,} bytes, outputs identical in "
        f"{'TFLM and LiteRT' if litert else 'TFLM'} on {len(x)} images; kept {', '.join(kept) or 'nothing'}"
        + (f"; rejected {', '.join(dropped)}" if dropped else ""))
    return data, record


def compact_verified(data: bytes, pixels: np.ndarray, contract, n: int = 32,
                     log: Callable[[str], None] = lambda m: None) -> tuple[bytes, dict]:
    """:func:`tinyq.convert.compact.compact`, verified on the first ``n`` of ``pixels`` (uint8 images)."""
    return compact(data, model_input(flatbuffer.parse(data), pixels[:n], contract), log)
