"""The AOT steps in numpy, integer for integer: the C engine's specification, checked against TFLM."""
from __future__ import annotations

import numpy as np

from tinyq.aot.lower import Program, Step
from tinyq.fixedpoint import multiply_by_quantized_multiplier as mbqm
from tinyq.fixedpoint import softmax_int8_raw


def _windows(x: np.ndarray, kh: int, kw: int, stride, dilation, pad, out_hw, fill: int) -> np.ndarray:
    """(N, OH, OW, KH, KW, C) input patches; positions outside the image hold ``fill`` (the zero point:
    the kernels skip them, which is the same as adding zero)."""
    n, h, w, c = x.shape
    oh, ow = out_hw
    (sh, sw), (dh, dw), (ph, pw) = stride, dilation, pad
    big = np.full((n, h + 2 * ph + kh * dh, w + 2 * pw + kw * dw, c), fill, np.int64)
    big[:, ph:ph + h, pw:pw + w] = x
    rows = (np.arange(oh) * sh)[:, None] + np.arange(kh) * dh  # (OH, KH)
    cols = (np.arange(ow) * sw)[:, None] + np.arange(kw) * dw  # (OW, KW)
    return big[:, rows[:, None, :, None], cols[None, :, None, :]]  # (N, OH, OW, KH, KW, C)


def _requantize(acc: np.ndarray, p: dict, zero_point: int) -> np.ndarray:
    y = mbqm(acc, p["multiplier"], p["shift"]) + zero_point
    return np.clip(y, p["act_min"], p["act_max"])


def accumulate(program: Program, step: Step, x: np.ndarray) -> np.ndarray:
    """A conv, depthwise or fully connected step's int32 sums, bias included, before requantization."""
    src, dst = program.tensors[step.inputs[0]], program.tensors[step.output]
    p = step.params
    xi = x.astype(np.int64) - src.zero_point
    w = p["weights"].astype(np.int64)
    if step.op == "fc":  # w: (O, I)
        return xi.reshape(xi.shape[0], -1) @ w.T + p["bias"]
    kh, kw = w.shape[1], w.shape[2]
    patches = _windows(xi, kh, kw, p["stride"], p["dilation"], p["pad"], dst.shape[1:3], 0)
    if step.op == "conv":  # w: (O, KH, KW, I)
        return np.einsum("nhwabc,oabc->nhwo", patches, w) + p["bias"]
    # depthwise, w: (1, KH, KW, C * M); output channel c * M + m reads input channel c
    patches = np.repeat(patches, p["depth_multiplier"], axis=-1)
    return np.einsum("nhwabc,abc->nhwc", patches, w[0]) + p["bias"]


def run_step(program: Program, step: Step, x: np.ndarray) -> np.ndarray:
    src, dst = program.tensors[step.inputs[0]], program.tensors[step.output]
    p = step.params
    xi = x.astype(np.int64) - src.zero_point
    if step.op in ("conv", "depthwise", "fc"):
        return _requantize(accumulate(program, step, x), p, dst.zero_point).reshape(len(x), *dst.shape[1:])
    if step.op == "mean":
        total = xi.sum(axis=(1, 2), keepdims=True)
        y = mbqm(total, p["multiplier"], p["shift"]) + dst.zero_point
        return np.clip(y, -128, 127).reshape(len(x), *dst.shape[1:])
    if step.op == "reshape":
        return x.reshape(len(x), *dst.shape[1:])
    if step.op == "avgpool":  # TFLM's int8 average: the taps inside the image, rounded half away from zero
        (kh, kw), (sh, sw), (ph, pw) = p["filter"], p["stride"], p["pad"]
        n, h, w, c = x.shape
        out = np.zeros((n, *dst.shape[1:]), np.int64)
        for oy in range(dst.shape[1]):
            y0, y1 = max(0, oy * sh - ph), min(h, oy * sh - ph + kh)
            for ox in range(dst.shape[2]):
                x0, x1 = max(0, ox * sw - pw), min(w, ox * sw - pw + kw)
                total = x[:, y0:y1, x0:x1].astype(np.int64).sum(axis=(1, 2))
                count = (y1 - y0) * (x1 - x0)
                avg = np.where(total > 0, (total + count // 2) // count, -((-(total - count // 2)) // count))
                out[:, oy, ox] = np.clip(avg, p["act_min"], p["act_max"])
        return out
    if step.op == "softmax":
        return softmax_int8_raw(x, p["multiplier"], p["left_shift"], p["diff_min"])
    raise ValueError(step.op)


def run(program: Program, x: np.ndarray) -> np.ndarray:
    """int8 outputs of ``program`` for int8 inputs ``x`` (N, H, W, C), one image at a time as the C engine."""
    outs = []
    for image in x:
        values = {program.input: image[None].astype(np.int64)}
        for step in program.steps:
            values[step.output] = run_step(program, step, values[step.inputs[0]])
        outs.append(values[program.output].reshape(-1).astype(np.int8))
    return np.stack(outs)
