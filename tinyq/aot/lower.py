"""A tinyq .tflite as integer steps: what each int8 kernel computes, with its constants resolved.

Ops: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED (int8 activations, int8 weights or 2/4-bit
weights decoded from TFLM's LUT DECODE or packed INT4), AVERAGE_POOL_2D, MEAN over height and
width, RESHAPE, SOFTMAX. Per-channel requantization is TFLite's: ``M_c = s_in * s_w[c] / s_out`` in double,
as ``QuantizeMultiplier`` splits it into an int32 ``q`` in ``[2^30, 2^31)`` and a shift;
fused activations clamp at the quantized 0 and 6 (``CalculateActivationRangeQuantized``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tinyq.errors import TinyqError
from tinyq.fixedpoint import quantize_multiplier, softmax_params
from tinyq.tflite.packing import unpack_indices

ACTIVATIONS = {0: "none", 1: "relu", 2: "relu_n1_to_1", 3: "relu6"}
DCM_BYTES, DCM_BITS, DCM_STRIDE = 16, 5, 6  # TFLM's decode metadata: header size, index width byte, stride byte


@dataclass
class Tensor:
    index: int
    shape: tuple[int, ...]
    scale: float
    zero_point: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Step:
    """One kernel call: ``op`` in conv, depthwise, fc, mean, reshape, softmax."""

    op: str
    inputs: list[int]  # activation tensors read
    output: int
    params: dict = field(default_factory=dict)


@dataclass
class Program:
    tensors: dict[int, Tensor]
    steps: list[Step]
    input: int
    output: int


def _schema():
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    return schema


def _quant(t) -> tuple[np.ndarray, np.ndarray, int]:
    q = t.quantization
    if q is None or q.scale is None:
        return np.zeros(0, np.float32), np.zeros(0, np.int64), 0
    zp = np.zeros(len(q.scale), np.int64) if q.zeroPoint is None else np.asarray(q.zeroPoint, np.int64)
    return np.asarray(q.scale, np.float32), zp, int(q.quantizedDimension)


def _buffer(model, t) -> np.ndarray | None:
    data = model.buffers[t.buffer].data
    return None if data is None or len(data) == 0 else np.asarray(data, np.uint8)


def _decoded(model, encoded_t, ancillary_t, out_t) -> np.ndarray:
    """The int8 values TFLM's DECODE writes for one LUT-compressed tensor."""
    table = _buffer(model, ancillary_t)
    bits, stride = int(table[DCM_BITS]) & 0x7, int(table[DCM_STRIDE])
    values = table[DCM_BYTES:].view(np.int8)
    shape = tuple(int(d) for d in out_t.shape)
    count = int(np.prod(shape))
    idx = unpack_indices(_buffer(model, encoded_t).tobytes(), bits, count)
    scales, _, axis = _quant(out_t)
    channels = max(len(scales), 1)
    if channels == 1 or stride == 0:
        channel = np.zeros(count, np.int64)
    elif axis == 0:
        channel = np.arange(count) // (count // channels)
    else:
        channel = np.arange(count) % channels
    return values[channel * stride + idx].reshape(shape)


def _constant(model, consts: dict[int, np.ndarray], index: int) -> np.ndarray:
    if index in consts:
        return consts[index]
    t = model.subgraphs[0].tensors[index]
    raw = _buffer(model, t)
    if raw is None:
        raise TinyqError(f"tensor {index} of the file has no data: not a model tinyq's AOT engine reads")
    shape = tuple(int(d) for d in t.shape)
    if t.type == _schema().TensorType.INT4:
        from tinyq.tflite.packing import unpack_int4

        return unpack_int4(raw.tobytes(), int(np.prod(shape))).reshape(shape).astype(np.int8)
    dtype = {_schema().TensorType.INT8: np.int8, _schema().TensorType.INT32: np.int32,
             _schema().TensorType.INT64: np.int64}.get(t.type)
    if dtype is None:
        raise TinyqError(f"tensor {index} has type {t.type}, which the AOT engine does not read")
    return raw.view(dtype).reshape(shape)


def _activation_range(code: int, scale: float, zero_point: int) -> tuple[int, int]:
    """``CalculateActivationRangeQuantized`` for int8: the quantized clamp bounds of a fused activation."""
    s = np.float32(scale)

    def q(f: float) -> int:  # TfLiteRound(f / scale) in float32, half away from zero
        v = np.float32(f) / s
        return zero_point + int(np.sign(v) * np.floor(np.abs(v) + np.float32(0.5)))

    name = ACTIVATIONS.get(code)
    if name is None:
        raise TinyqError(f"fused activation {code} is not one the AOT engine computes")
    lo, hi = -128, 127
    if name == "relu":
        lo = max(lo, q(0.0))
    elif name == "relu6":
        lo, hi = max(lo, q(0.0)), min(hi, q(6.0))
    elif name == "relu_n1_to_1":
        lo, hi = max(lo, q(-1.0)), min(hi, q(1.0))
    return lo, hi


def _padding(size: int, kernel: int, stride: int, dilation: int, same: bool) -> tuple[int, int]:
    """(output size, padding before) as TFLite computes them (``ComputePaddingHeightWidth``)."""
    effective = (kernel - 1) * dilation + 1
    out = (size + stride - 1) // stride if same else (size - effective + stride) // stride
    total = max(0, (out - 1) * stride + effective - size)
    return out, total // 2


def lower(data: bytes) -> Program:
    """The steps of the tinyq file ``data``; a one-line error for anything outside them."""
    schema = _schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(data), 0))
    if len(model.subgraphs) != 1:
        raise TinyqError("the AOT engine takes files of one subgraph")
    sg = model.subgraphs[0]
    ops = schema.BuiltinOperator
    names = {v: k for k, v in vars(ops).items() if not k.startswith("_")}
    tensors: dict[int, Tensor] = {}
    consts: dict[int, np.ndarray] = {}

    def act(index: int) -> Tensor:
        if index not in tensors:
            t = sg.tensors[index]
            scales, zps, _ = _quant(t)
            if t.type != schema.TensorType.INT8 or len(scales) != 1:
                raise TinyqError(f"activation tensor {index} is not int8 with one scale; the AOT engine runs "
                                 "full-integer int8 models")
            tensors[index] = Tensor(index, tuple(int(d) for d in t.shape), float(scales[0]), int(zps[0]))
        return tensors[index]

    steps: list[Step] = []
    lut: set[int] = set()  # tensors DECODE writes from 2-bit indices
    for op in sg.operators:
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        custom = (code.customCode or b"").decode() if isinstance(code.customCode, bytes) else (code.customCode or "")
        name = custom if builtin == ops.CUSTOM else names.get(builtin, str(builtin))
        inputs, outputs = [int(i) for i in op.inputs], [int(o) for o in op.outputs]
        opts = op.builtinOptions
        if name in ("DECODE", "TFLM_DECODE"):
            for k, out in enumerate(outputs):
                consts[out] = _decoded(model, sg.tensors[inputs[2 * k]], sg.tensors[inputs[2 * k + 1]], sg.tensors[out])
                lut.add(out)
            continue
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            x, y = act(inputs[0]), act(outputs[0])
            w = _constant(model, consts, inputs[1]).astype(np.int8)
            storage = ("2bit" if inputs[1] in lut else
                       "int4" if sg.tensors[inputs[1]].type == schema.TensorType.INT4 else "int8")
            bias = (_constant(model, consts, inputs[2]).astype(np.int64) if len(inputs) > 2 and inputs[2] >= 0
                    else np.zeros(w.shape[-1 if name == "DEPTHWISE_CONV_2D" else 0], np.int64))
            w_scales = _quant(sg.tensors[inputs[1]])[0]
            real = np.float64(np.float32(x.scale)) * w_scales.astype(np.float64) / np.float64(np.float32(y.scale))
            q, shift = quantize_multiplier(real)
            channels = bias.shape[0]
            q, shift = np.broadcast_to(q, (channels,)).copy(), np.broadcast_to(shift, (channels,)).copy()
            lo, hi = _activation_range(opts.fusedActivationFunction, y.scale, y.zero_point)
            params = {"weights": w, "storage": storage, "bias": bias, "multiplier": q.astype(np.int64), "shift": shift.astype(np.int64),
                      "act_min": lo, "act_max": hi}
            if name == "FULLY_CONNECTED":
                steps.append(Step("fc", [x.index], y.index, params))
                continue
            same = opts.padding == schema.Padding.SAME
            _, h, wd, _ = x.shape
            kh, kw = (w.shape[1], w.shape[2])
            oh, pad_h = _padding(h, kh, opts.strideH, opts.dilationHFactor, same)
            ow, pad_w = _padding(wd, kw, opts.strideW, opts.dilationWFactor, same)
            if (oh, ow) != tuple(y.shape[1:3]):
                raise TinyqError(f"op writing tensor {y.index}: output {y.shape} is not what its padding gives")
            params.update(stride=(opts.strideH, opts.strideW), dilation=(opts.dilationHFactor, opts.dilationWFactor),
                          pad=(pad_h, pad_w))
            if name == "DEPTHWISE_CONV_2D":
                params["depth_multiplier"] = y.shape[3] // x.shape[3]
            steps.append(Step("conv" if name == "CONV_2D" else "depthwise", [x.index], y.index, params))
        elif name == "MEAN":
            x, y = act(inputs[0]), act(outputs[0])
            axes = sorted(int(a) % len(x.shape) for a in _constant(model, consts, inputs[1]).ravel())
            if axes != [1, 2] or len(x.shape) != 4:
                raise TinyqError("the AOT engine's MEAN averages height and width of a 4-D tensor only")
            n = x.shape[1] * x.shape[2]
            q, shift = quantize_multiplier(np.float64(np.float32(x.scale)) / np.float64(np.float32(y.scale)))
            bits = min(int(n).bit_length() - 1, 32, 31 + int(shift))
            steps.append(Step("mean", [x.index], y.index, {"multiplier": int((int(q) << bits) // n),
                                                             "shift": int(shift) - bits, "count": n}))
        elif name == "AVERAGE_POOL_2D":
            x, y = act(inputs[0]), act(outputs[0])
            if (np.float32(x.scale), x.zero_point) != (np.float32(y.scale), y.zero_point):
                raise TinyqError("the AOT engine's AVERAGE_POOL_2D keeps its input's scale and zero point, as TFLM's int8 "
                                 "kernel does")
            same = opts.padding == schema.Padding.SAME
            oh, pad_h = _padding(x.shape[1], opts.filterHeight, opts.strideH, 1, same)
            ow, pad_w = _padding(x.shape[2], opts.filterWidth, opts.strideW, 1, same)
            if (oh, ow) != tuple(y.shape[1:3]):
                raise TinyqError(f"op writing tensor {y.index}: output {y.shape} is not what its padding gives")
            lo, hi = _activation_range(opts.fusedActivationFunction, y.scale, y.zero_point)
            steps.append(Step("avgpool", [x.index], y.index, {"filter": (opts.filterHeight, opts.filterWidth),
                                                               "stride": (opts.strideH, opts.strideW),
                                                               "pad": (pad_h, pad_w), "act_min": lo, "act_max": hi}))
        elif name == "RESHAPE":
            x, y = act(inputs[0]), act(outputs[0])
            steps.append(Step("reshape", [x.index], y.index))
        elif name == "SOFTMAX":
            x, y = act(inputs[0]), act(outputs[0])
            if (y.zero_point, np.float32(y.scale)) != (-128, np.float32(1 / 256)):
                raise TinyqError("the AOT engine's SOFTMAX writes int8 with scale 1/256 and zero point -128 only")
            q, left, diff_min = softmax_params(x.scale, float(opts.beta))
            steps.append(Step("softmax", [x.index], y.index, {"multiplier": q, "left_shift": left,
                                                               "diff_min": diff_min}))
        else:
            raise TinyqError(f"op {name} is not one the AOT engine computes (conv, depthwise, fully connected, "
                             "average pool, mean, reshape, softmax)")
    return Program(tensors, steps, act(int(sg.inputs[0])).index, act(int(sg.outputs[0])).index)
