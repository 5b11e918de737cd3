"""Running a flatbuffer: LiteRT (reference kernels, no delegate) and TFLM on int8 inputs, and TFLM's arena.

Array in, array out: what a file computes, nothing about data folders or run folders.
:mod:`tinyq.runtimes.guard` runs a file it did not write once in a child process first.
"""
from __future__ import annotations

import re

import numpy as np

from tinyq.contract import InputContract
from tinyq.errors import TinyqError
from tinyq.logs import bar, captured_fd2
from tinyq.tflite import flatbuffer

LITERT_OPS_MISSING = set(flatbuffer.DECODE_OPS)


def quantize_input(pixels: np.ndarray, contract: InputContract, scale: float, zero_point: int) -> np.ndarray:
    return np.clip(np.round(contract.to_float(pixels) / scale + zero_point), -128, 127).astype(np.int8)


def model_input(fb: flatbuffer.Flatbuffer, pixels: np.ndarray, contract: InputContract) -> np.ndarray:
    """``pixels`` (uint8) as the int8 input of the file ``fb``, by its input quantization."""
    return quantize_input(pixels, contract, *fb.tensors[fb.inputs[0]].affine)


def require_int8_io(fb: flatbuffer.Flatbuffer, tflite, needs: str) -> None:
    """A one-line error unless ``fb`` takes int8 in and gives int8 out (``needs`` ends the message)."""
    if not fb.inputs or not fb.outputs:
        raise TinyqError(f"{str(tflite)!r} has {len(fb.inputs)} inputs and {len(fb.outputs)} outputs; {needs}")
    tin, tout = fb.tensors[fb.inputs[0]], fb.tensors[fb.outputs[0]]
    if tin.type != "INT8" or tout.type != "INT8":
        raise TinyqError(f"{str(tflite)!r} has {tin.type} input / {tout.type} output; {needs}")
    for what, t in (("input", tin), ("output", tout)):
        if t.scales.size != 1 or t.zero_points.size != 1 or not (np.isfinite(t.scales[0]) and t.scales[0] > 0):
            raise TinyqError(f"{str(tflite)!r} has an {what} without one finite positive scale "
                             f"({t.scales.tolist()[:4]}); {needs}")


def _litert_interpreter(data: bytes):
    """A LiteRT interpreter on reference kernels; ``(interpreter, "reference" | "builtin")``.

    Reference kernels, no delegate: XNNPACK's requantisation rounds differently from TFLM's,
    and so, rarely, does the optimized builtin FULLY_CONNECTED. The reference kernels match TFLM
    on every op but FULLY_CONNECTED, which requantizes with one rounding where TFLM rounds twice:
    near ties part by an output step or two (benchmarks/litert_fc.py measures it). The
    reference set lacks some int4 versions (DEPTHWISE_CONV_2D v7): then the builtin kernels.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    error = ""
    for kernels, resolver in (("reference", OpResolverType.BUILTIN_REF),
                              ("builtin", OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)):
        try:
            it = Interpreter(model_content=data, num_threads=1, experimental_op_resolver_type=resolver)
            it.allocate_tensors()
            return it, kernels
        except (ValueError, RuntimeError) as e:
            error = str(e).strip().splitlines()[0][:200]
            if "find op" not in error:  # not a missing kernel: the file itself is the problem
                break
    raise TinyqError(f"LiteRT cannot load the model: {error}")


def litert_outputs(data: bytes, x: np.ndarray) -> tuple[np.ndarray, str]:
    """LiteRT's int8 outputs for ``x`` and which kernels ran them."""
    it, kernels = _litert_interpreter(data)
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    outs = []
    try:
        for xi in x:
            it.set_tensor(inp, xi[None])
            it.invoke()
            outs.append(it.get_tensor(out)[0].copy())
    except (ValueError, RuntimeError) as e:  # a damaged file can load and still fail to run
        raise TinyqError(f"LiteRT cannot run the model: {str(e).strip().splitlines()[0][:200]}") from None
    return np.stack(outs), kernels


def arena_sizes(data: bytes) -> list[int]:
    """Arena sizes to try, smallest first: 1 MB (or 4x the file) up to 1 GB, x4 each time. A host has
    the memory; a model too big for 1 MB (96x96x64 activations need 1.2 MB) is still a model to check."""
    first = max(len(data) * 4, 1 << 20)
    return [first << (2 * k) for k in range(8) if first << (2 * k) <= 1 << 30] or [first]


def tflm_interpreter(data: bytes, arena: int | None = None):
    from tflite_micro import runtime

    error = ""
    for size in [arena] if arena else arena_sizes(data):
        try:
            with captured_fd2() as text:  # TFLM prints each failed allocation; only the last failure matters
                return runtime.Interpreter.from_bytes(data, arena_size=size)
        except Exception as e:
            error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "allocate" not in error:  # not a matter of arena size
                break
    raise TinyqError(f"TFLM cannot load the model: {error}" + (f" ({text[0].strip().splitlines()[-1]})"
                                                               if text and text[0].strip() else ""))


def arena_bytes(data: bytes) -> int:
    """Arena bytes TFLM's recording allocator reports after one inference (64-bit host)."""
    it = tflm_interpreter(data)
    fb = flatbuffer.parse(data)
    t = fb.tensors[fb.inputs[0]]
    it.set_input(np.zeros(t.shape, np.int8), 0)
    it.invoke()
    with captured_fd2() as text:
        it.print_allocations()
    m = re.search(r"Arena allocation total (\d+) bytes", text[0])
    if not m:
        raise RuntimeError(f"TFLM printed no arena total: {text[0][:200]!r}")
    return int(m.group(1))


def tflm_outputs(data: bytes, x: np.ndarray) -> np.ndarray:
    """TFLM's int8 outputs for the int8 inputs ``x`` (N, H, W, C)."""
    it = tflm_interpreter(data)
    outs = []
    with bar(len(x), "TFLM", "image") as shown:
        for xi in x:
            it.set_input(xi[None], 0)
            it.invoke()
            outs.append(np.array(it.get_output(0))[0])
            shown.update(1)
    return np.stack(outs)
