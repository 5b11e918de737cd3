"""Read a .tflite flatbuffer: tensors, types, buffers and ops, with clear errors for bad files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyq.errors import TinyqError

# The TFLite schema as generated Python; tflite-micro ships it.
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema  # noqa: E402

TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
# TFLM's DECODE (LUT decompression) is stored as a custom op named TFLM_DECODE.
DECODE_OPS = ("DECODE", "TFLM_DECODE")
TYPE_BITS = {"FLOAT32": 32, "FLOAT16": 16, "INT32": 32, "UINT8": 8, "INT64": 64, "INT16": 16,
             "INT8": 8, "INT4": 4, "INT2": 2, "BOOL": 8, "UINT32": 32, "UINT16": 16, "FLOAT64": 64}


MAX_ELEMENTS = 1 << 26  # elements of one tensor: 64 MB of int8, far past a microcontroller


@dataclass
class Tensor:
    index: int
    name: str
    type: str
    shape: tuple[int, ...]
    buffer: int
    data: np.ndarray | None  # raw bytes of a constant tensor
    scales: np.ndarray
    zero_points: np.ndarray
    quantized_dimension: int

    @property
    def bits(self) -> int:
        return TYPE_BITS.get(self.type, 8)

    @property
    def count(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return 0 if self.data is None else int(self.data.size)

    @property
    def affine(self) -> tuple[float, int]:
        """``(scale, zero_point)`` of a per-tensor quantized tensor: ``real = scale * (q - zero_point)``."""
        return float(self.scales[0]), int(self.zero_points[0])


@dataclass
class Op:
    name: str
    inputs: list[int]
    outputs: list[int]


@dataclass
class Flatbuffer:
    size: int
    tensors: list[Tensor]
    ops: list[Op]
    inputs: list[int]
    outputs: list[int]
    names_from_map: bool = False  # tensor names restored from X.names.json (compaction removed them)

    @property
    def op_names(self) -> list[str]:
        return sorted({op.name for op in self.ops})

    def float_ops(self) -> list[str]:
        """Ops computing in float (a FLOAT32 output), ``NAME(output tensor)``; none in a full-integer file."""
        return [f"{op.name}({self.tensors[op.outputs[0]].name})" for op in self.ops
                if op.name != "DEQUANTIZE" and op.outputs and self.tensors[op.outputs[0]].type == "FLOAT32"]

    def weight_tensors(self) -> dict[int, Op]:
        """Constant weight inputs of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED (after DECODE, its source)."""
        out = {}
        producers = {t: op for op in self.ops for t in op.outputs}
        for op in self.ops:
            if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(op.inputs) > 1:
                t = op.inputs[1]
                src = producers.get(t)
                if src is not None and src.name in DECODE_OPS:
                    t = src.inputs[0]
                out[t] = op
        return out


def _op_name(model, op) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        return (code.customCode or b"CUSTOM").decode(errors="replace")
    return OP_NAMES.get(builtin, f"OP_{builtin}")


def parse(data: bytes, what: str = "the model") -> Flatbuffer:
    """Parse TFLite flatbuffer bytes; a truncated or foreign file raises a TinyqError."""
    bad = TinyqError(f"{what} is not a valid .tflite flatbuffer (truncated or corrupt); convert it again "
                     "(tinyq convert RUN)")
    if len(data) < 16 or data[4:8] != b"TFL3":
        raise bad
    try:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(data), 0))
        sg = model.subgraphs[0]
        tensors = []
        for i, t in enumerate(sg.tensors or []):
            # TFLM trusts these indices and sizes (it has no verifier): out of range, it reads wild memory
            if not 0 <= t.buffer < len(model.buffers or []):
                raise bad
            buf = model.buffers[t.buffer]
            raw = None
            if buf.data is not None and len(buf.data):
                raw = np.asarray(buf.data, np.uint8)
            elif buf.offset and buf.size:
                if buf.offset + buf.size > len(data):
                    raise bad
                raw = np.frombuffer(data, np.uint8, buf.size, buf.offset)
            shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
            if any(d < 0 for d in shape) or (raw is not None and len(raw) < _packed_bytes(t.type, shape)):
                raise bad
            if int(np.prod(shape, dtype=np.float64)) > MAX_ELEMENTS:  # what a runtime would try to allocate
                raise TinyqError(f"{what} is not a valid .tflite for a microcontroller: a tensor of shape {shape} is "
                                 "past any one's memory; convert it again (tinyq convert RUN)")
            q = t.quantization
            tensors.append(Tensor(
                i, (t.name or b"").decode(errors="replace"), TYPE_NAMES.get(t.type, str(t.type)),
                shape, t.buffer, raw,
                np.asarray(q.scale if q is not None and q.scale is not None else [], np.float32),
                np.asarray(q.zeroPoint if q is not None and q.zeroPoint is not None else [], np.int64),
                int(q.quantizedDimension) if q is not None else 0))
        ops = [Op(_op_name(model, op), [int(x) for x in op.inputs], [int(x) for x in op.outputs])
               for op in sg.operators or []]
        for op in ops:  # -1: an optional input left out
            if any(not -1 <= x < len(tensors) for x in op.inputs + op.outputs):
                raise bad
            # DECODE takes (encoded, ancillary) pairs and gives one output per pair
            if op.name in DECODE_OPS and (not op.inputs or len(op.inputs) % 2 or len(op.outputs) != len(op.inputs) // 2):
                raise bad
        if any(not 0 <= x < len(tensors) for x in list(sg.inputs) + list(sg.outputs)):
            raise bad
        return Flatbuffer(len(data), tensors, ops, [int(x) for x in sg.inputs], [int(x) for x in sg.outputs])
    except TinyqError:
        raise
    except Exception:  # the generated reader raises anything from IndexError to struct.error
        raise bad from None


def _packed_bytes(type_code: int, shape: tuple[int, ...]) -> int:
    """The bytes a constant tensor of ``shape`` needs (sub-byte types packed); 0 for types of no fixed width."""
    bits = TYPE_BITS.get(TYPE_NAMES.get(type_code, ""), 0)
    return -(-int(np.prod(shape, dtype=np.int64)) * bits // 8)


def _empty():
    import io

    return io.BytesIO(b"")


def resolve(path: str | Path) -> Path:
    """A .tflite path; a run folder stands for its model.tflite."""
    path = Path(path)
    return path / "model.tflite" if path.is_dir() and (path / "model.tflite").is_file() else path


KERAS_HINT = "quantize it first (tinyq quantize MODEL --bits B --data DIR) and pass the run folder or its model.tflite"


def not_a_flatbuffer(path: Path, head: bytes) -> str | None:
    """What ``path`` is instead of a TFLite flatbuffer, when its first bytes or its folder say so."""
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return f"{str(path)!r} is a TensorFlow SavedModel, not a .tflite file: {KERAS_HINT}"
        if (path / "config.json").exists():
            return f"{str(path)!r} is a run folder without model.tflite: finish it (--resume) or tinyq convert RUN"
        return f"{str(path)!r} is a folder without model.tflite; give a .tflite file or a run folder"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return f"{str(path)!r} is a Keras model (HDF5), not a .tflite file: {KERAS_HINT}"
    if head.startswith(b"PK\x03\x04"):
        return f"{str(path)!r} is a zip archive (a .keras model?), not a .tflite file: {KERAS_HINT}"
    if head[4:8] != b"TFL3" and head[:1] in (b"{", b"[", b"#") or head[:5].lower() in (b"<!doc", b"<html"):
        return f"{str(path)!r} is a text file, not a .tflite file; give the model tinyq wrote (RUN/model.tflite)"
    return None


def read(path: str | Path) -> tuple[bytes, Flatbuffer]:
    path = resolve(path)
    if not path.exists():
        raise TinyqError(f"{str(path)!r} does not exist; give the path of a .tflite file")
    with (open(path, "rb") if path.is_file() else _empty()) as f:
        problem = not_a_flatbuffer(path, f.read(16))
    if problem:
        raise TinyqError(problem)
    data = path.read_bytes()
    fb = parse(data, repr(str(path)))
    _restore_names(fb, path)
    return data, fb


def names_path(tflite: Path) -> Path:
    """Where the tensor-name map of a compacted ``X.tflite`` lives: ``X.names.json`` beside it."""
    return tflite.with_name(tflite.stem + ".names.json")


def _restore_names(fb: Flatbuffer, path: Path) -> None:
    """Give a compacted file's tensors their names back from the map beside it, if it matches."""
    import json

    if any(t.name for t in fb.tensors):
        return
    try:
        names = json.loads(names_path(path).read_text())["tensor_names"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if isinstance(names, list) and len(names) == len(fb.tensors):
        for t, name in zip(fb.tensors, names):
            t.name = str(name)
        fb.names_from_map = True


def int_values(t: Tensor) -> np.ndarray:
    """The integer values of a constant INT8 / INT4 tensor, in its shape."""
    from tinyq.tflite.packing import unpack_int4

    if t.data is None:
        raise ValueError(f"tensor {t.index} has no data")
    if t.type == "INT4":
        return unpack_int4(t.data.tobytes(), t.count).reshape(t.shape)
    if t.type == "INT8":
        return t.data.view(np.int8).reshape(t.shape)
    raise ValueError(f"tensor {t.index} is {t.type}, not INT8 or INT4")
