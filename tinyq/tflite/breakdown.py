"""Where a flatbuffer's bytes go: per tensor, and weights / tables / quantization / the rest."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tinyq.tflite import flatbuffer

WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
# the converter fuses op names into "model/quant_conv2d_3/Conv2D;model/quant_conv2d_3/FakeQuant...;..."
_KERAS_LAYER = re.compile(r"(?:^|/)(?:quant_)?([A-Za-z0-9_.-]+)/(?:Conv2D|depthwise|MatMul|BiasAdd|Relu|Relu6|"
                          r"FakeQuant|LastValueQuant|Mean|Reshape|Softmax|BatchNorm)")

_BIAS_OF = re.compile(r"(?:^|/)(?:quant_)?([A-Za-z0-9_.-]+)/BiasAdd")


def layer_name(tensor_name: str) -> str:
    """The Keras layer a converted tensor belongs to (``conv2d_3`` for TFMOT's ``quant_conv2d_3``),
    else the tensor's name up to its first ``;``."""
    m = _BIAS_OF.search(tensor_name) or _KERAS_LAYER.search(tensor_name)  # a fused bias: its conv, not the ReLU
    return m.group(1) if m else tensor_name.split(";")[0]


def inspect_model(path: str | Path) -> dict:
    """Per-tensor type, bits and bytes, and the file's breakdown.

    - ``weights``: constant inputs of conv / depthwise / fully-connected ops (LUT indices for
      2-bit tensors);
    - ``value_tables``: DECODE's ancillary tensors (LUT header and per-channel values);
    - ``biases``: other constant tensors (int32 biases, shapes);
    - ``quantization``: scales (4 bytes each) and zero points (8 bytes each, int64 in the schema);
    - ``names``: tensor names;
    - ``rest``: graph structure, op options, flatbuffer tables and padding.
    """
    path = flatbuffer.resolve(path)
    data, fb = flatbuffer.read(path)
    weights = stored_weights(fb)
    table_ids = {w["table"] for w in weights.values() if w["table"] is not None}
    rows = []
    totals = dict(weights=0, value_tables=0, biases=0, quantization=0, names=0)
    params = 0
    packed_bits = 0
    for t in fb.tensors:
        w = weights.get(t.index)
        lut = w is not None and w["table"] is not None
        kind = "weights" if w is not None else "value_tables" if t.index in table_ids else \
            "biases" if t.data is not None else "activation"
        bits = w["bits"] if lut else t.bits
        # LUT-encoded tensors are stored as a flat UINT8 byte vector: count from their width
        count = t.nbytes * 8 // bits if lut else t.count
        if w is not None:
            params += count
            packed_bits += count * bits
        # a LUT tensor is stored as a flat byte vector: its shape is the decoded tensor's
        rows.append({"index": t.index, "name": t.name, "type": f"LUT{bits}" if lut else t.type,
                     "layer": w.get("layer", layer_name(t.name)) if w is not None else layer_name(t.name),
                     "bits": bits, "shape": w["shape"] if lut else list(t.shape), "stored_shape": list(t.shape),
                     "bytes": t.nbytes, "kind": kind, "params": count,
                     "channels": w["channels"] if w is not None else int(t.scales.size)})
        if kind in totals:
            totals[kind] += t.nbytes
        totals["quantization"] += 4 * t.scales.size + 8 * t.zero_points.size
        totals["names"] += 0 if fb.names_from_map else len(t.name.encode())
    totals["rest"] = len(data) - sum(totals.values())
    packed = packed_bits / 8
    return {"file": str(path), "file_bytes": len(data), "ops": [op.name for op in fb.ops],
            "tensors": rows, "breakdown": totals, "weight_params": params,
            "packed_weight_bytes": int(np.ceil(packed)),
            "file_over_packed_weights": round(len(data) / packed, 3) if packed else None}


def stored_weights(fb: flatbuffer.Flatbuffer) -> dict[int, dict]:
    """The filter tensor of every conv / depthwise / fully-connected op as stored:
    ``{index: {"bits", "channels", "table"}}``; for a 2-bit LUT, the index tensor, the width from
    its header, the channels of the decoded tensor (compaction drops the indices' scales) and
    the value-table tensor."""
    producers = {t: op for op in fb.ops for t in op.outputs}
    out: dict[int, dict] = {}
    for op in fb.ops:
        if op.name in WEIGHT_OPS and len(op.inputs) > 1:
            t = op.inputs[1]
            src = producers.get(t)
            if src is not None and src.name in flatbuffer.DECODE_OPS:
                decoded = fb.tensors[src.outputs[0]]
                out[src.inputs[0]] = {"bits": _lut_bits(fb.tensors[src.inputs[1]]), "table": src.inputs[1],
                                      "channels": int(decoded.scales.size), "shape": list(decoded.shape),
                                      "layer": layer_name(decoded.name)}
            else:
                out[t] = {"bits": fb.tensors[t].bits, "table": None, "channels": int(fb.tensors[t].scales.size)}
    return out


def _lut_bits(ancillary: flatbuffer.Tensor) -> int:
    """Index width from the LUT header: DCM byte 5, low 3 bits (tflite-micro decode_state_lut)."""
    if ancillary.data is None or ancillary.data.size < 6:
        return 8
    return int(ancillary.data[5]) & 0x7


def format_table(info: dict) -> str:
    lines = [f"{info['file']}: {info['file_bytes']:,} bytes, {len(info['ops'])} ops",
             f"{'#':>4} {'type':<8}{'bits':>5}{'bytes':>9}  {'kind':<13}{'shape':<20} layer"]
    for r in info["tensors"]:
        if r["kind"] == "activation":
            continue
        lines.append(f"{r['index']:>4} {r['type']:<8}{r['bits']:>5}{r['bytes']:>9}  {r['kind']:<13}"
                     f"{str(r['shape']):<20} {r.get('layer', r['name'])[:40]}")
    lines.append("breakdown:")
    for k, v in info["breakdown"].items():
        lines.append(f"  {k:<13}{v:>9,} bytes  {100 * v / info['file_bytes']:5.1f}%")
    ratio = info["file_over_packed_weights"]
    lines.append(f"weights: {info['weight_params']:,} parameters, {info['packed_weight_bytes']:,} bytes packed; "
                 f"file / packed weights = {ratio}")
    return "\n".join(lines)
