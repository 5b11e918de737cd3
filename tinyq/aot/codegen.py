"""C99 for one model: its constants in the form the kernels read, the kernels it uses, one call.

Weights are stored as the kernels read them, in the flatbuffer's element order (conv OHWI,
depthwise 1HWC, fully connected OI):

- ``int8``: one byte each;
- ``int4``: two per byte, element ``k`` in bits ``4 (k % 2) .. 4 (k % 2) + 3`` of byte ``k / 2``
  (low nibble first), two's complement;
- ``2bit``: four per byte, element ``k`` in bits ``2 (k % 4) .. 2 (k % 4) + 1`` of byte
  ``k / 4`` (least significant first), an index into the layer's four int8 levels (one set
  for the tensor when its channels share them, else four per output channel).

Biases take int16 where every one fits, else int32; requantization is a per-channel int32
multiplier and int8 shift (:mod:`tinyq.aot.lower`). The arithmetic is TFLM's reference
kernels', integer for integer (``tinyq.aot.reference`` is the same in numpy).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from tinyq.aot.lower import Program, Step
from tinyq.aot.memory import MemoryPlan, plan_memory, plane_shape, resident_rows, row_capacity

KERNEL_OPS = {"conv": "TQ_CONV", "depthwise": "TQ_DEPTHWISE", "fc": "TQ_FC"}


def pack_2bit(codes: np.ndarray) -> bytes:
    """Indices 0..3, four per byte, least significant first (module docstring)."""
    c = np.asarray(codes, np.uint8).ravel()
    c = np.concatenate([c, np.zeros(-len(c) % 4, np.uint8)]).reshape(-1, 4)
    return (c[:, 0] | (c[:, 1] << 2) | (c[:, 2] << 4) | (c[:, 3] << 6)).astype(np.uint8).tobytes()


def pack_4bit(values: np.ndarray) -> bytes:
    """int4 values -8..7, two per byte, low nibble first (module docstring)."""
    v = (np.asarray(values, np.int64).ravel() & 0xF).astype(np.uint8)
    v = np.concatenate([v, np.zeros(len(v) % 2, np.uint8)]).reshape(-1, 2)
    return (v[:, 0] | (v[:, 1] << 4)).astype(np.uint8).tobytes()


def levels_and_codes(w: np.ndarray, channel_axis: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(levels, codes, shared): the four int8 levels (one set, or one per channel along
    ``channel_axis``) and each weight's index into its channel's levels."""
    rows = np.moveaxis(w, channel_axis, 0).reshape(w.shape[channel_axis], -1)
    shared = np.unique(w)
    if len(shared) <= 4:
        levels = np.concatenate([shared, np.full(4 - len(shared), shared[-1])]).astype(np.int8)
        return levels[None], np.searchsorted(levels[: len(shared)], w), True
    levels = np.zeros((rows.shape[0], 4), np.int8)
    codes_rows = np.zeros(rows.shape, np.int64)
    for c, row in enumerate(rows):
        u = np.unique(row)
        if len(u) > 4:
            raise ValueError(f"channel {c} holds {len(u)} values; a 2-bit layer holds at most 4")
        levels[c] = np.concatenate([u, np.full(4 - len(u), u[-1])])
        codes_rows[c] = np.searchsorted(u, row)
    codes = np.moveaxis(codes_rows.reshape(np.moveaxis(w, channel_axis, 0).shape), 0, channel_axis)
    return levels, codes, False


def _array(ctype: str, name: str, values, per_line: int = 24) -> str:
    vals = [str(int(v)) for v in np.asarray(values).ravel()] or ["0"]
    body = ",\n  ".join(", ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line))
    return f"static const {ctype} {name}[{len(vals)}] = {{\n  {body}\n}};\n"


def _bytes(name: str, data: bytes) -> str:
    return _array("uint8_t", name, np.frombuffer(data, np.uint8) if data else [0], 32)


@dataclass
class Generated:
    header: str
    source: str
    buffer_bytes: int
    scratch_bytes: int  # the kernels' own static rows, plane and pixel
    helium_scratch_bytes: int  # the same compiled for Helium (MVE), which adds each channel's base
    constant_bytes: int  # bytes of weights, levels, biases and requantization constants
    packed_weight_bytes: int  # weights alone, at their bits


def _layer_constants(i: int, step: Step) -> tuple[str, dict, int, int]:
    """C arrays of one weight layer and the initialiser fields that point at them."""
    p = step.params
    w = p["weights"]
    axis = 3 if step.op == "depthwise" else 0
    out = []
    fields = {}
    storage = p["storage"]
    if storage == "2bit":
        levels, codes, shared = levels_and_codes(w, axis)
        data = pack_2bit(codes)
        out.append(_bytes(f"tq_w{i}", data))
        out.append(_array("int8_t", f"tq_lv{i}", levels))
        fields.update(w=f"tq_w{i}", levels=f"tq_lv{i}", lv_stride=0 if shared else 4, wbits=2)
        const = len(data) + levels.size
        packed = len(data)
    elif storage == "int4":
        data = pack_4bit(w)
        out.append(_bytes(f"tq_w{i}", data))
        fields.update(w=f"tq_w{i}", levels="0", lv_stride=0, wbits=4)
        const = packed = len(data)
    else:
        out.append(_array("int8_t", f"tq_w{i}", w))
        fields.update(w=f"(const uint8_t *)tq_w{i}", levels="0", lv_stride=0, wbits=8)
        const = packed = w.size
    bias = p["bias"]
    if np.all((bias >= -32768) & (bias <= 32767)):
        out.append(_array("int16_t", f"tq_b{i}", bias))
        fields.update(b16=f"tq_b{i}", b32="0")
        const += 2 * bias.size
    else:
        out.append(_array("int32_t", f"tq_b{i}", bias))
        fields.update(b16="0", b32=f"tq_b{i}")
        const += 4 * bias.size
    out.append(_array("int32_t", f"tq_m{i}", p["multiplier"]))
    out.append(_array("int8_t", f"tq_s{i}", p["shift"]))
    fields.update(mult=f"tq_m{i}", shift=f"tq_s{i}")
    const += 5 * len(p["multiplier"])
    return "".join(out), fields, const, packed


def generate(program: Program, name: str = "model", guard: str | None = None, settings: str | None = None) -> Generated:
    """``name.h`` and ``name.c`` for ``program``: ``int NAME_invoke(const int8_t *input, int8_t *output)``.

    Macros are ``GUARD_*`` (default: ``name`` in capitals). With ``settings`` (a header's file
    name) the header includes it for the input contract (sizes, scales, labels) and defines only
    the buffer's size; else it defines the sizes, scales and zero points itself.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"{name!r} is not a C identifier")
    memory = plan_memory(program)
    ops = {s.op for s in program.steps}
    consts, calls, layers, steps = [], [], [], []
    constant_bytes = packed_bytes = 0
    wbits = set()
    max_row = row_capacity(program)
    max_oc = 4  # output channels of the widest conv / fully connected layer, in fours (Helium's bases)
    for i, step in enumerate(program.steps):
        src, dst = program.tensors[step.inputs[0]], program.tensors[step.output]
        x, y = _pointer(program, memory, step.inputs[0]), _pointer(program, memory, step.output)
        p = step.params
        if step.op in KERNEL_OPS:
            text, f, const, packed = _layer_constants(i, step)
            consts.append(text)
            constant_bytes, packed_bytes = constant_bytes + const, packed_bytes + packed
            wbits.add(f["wbits"])
            if step.op == "fc":
                dims = dict(ih=1, iw=1, ic=src.size, oh=1, ow=1, oc=dst.size, kh=1, kw=1, sh=1, sw=1, dh=1, dw=1,
                            ph=0, pw=0, dm=1)
            else:
                w = p["weights"]
                dims = dict(ih=src.shape[1], iw=src.shape[2], ic=src.shape[3], oh=dst.shape[1], ow=dst.shape[2],
                            oc=dst.shape[3], kh=w.shape[1], kw=w.shape[2], sh=p["stride"][0], sw=p["stride"][1],
                            dh=p["dilation"][0], dw=p["dilation"][1], ph=p["pad"][0], pw=p["pad"][1],
                            dm=p.get("depth_multiplier", 1))
            if step.op != "depthwise":
                max_oc = max(max_oc, -(-dims["oc"] // 4) * 4)
            dims["hp"], dims["wp"] = plane_shape(program, step) if step.op == "depthwise" else (0, 0)
            dims["resident"] = int(step.op != "depthwise" and resident_rows(program, step))
            shifts = np.asarray(p["shift"])
            dims["left"], dims["fast"] = int(np.any(shifts > 0)), int(np.all((shifts >= -23) & (shifts <= -1)))
            init = ", ".join(f".{k} = {v}" for k, v in dims.items())
            layers.append(f"static const tq_layer tq_l{i} = {{{init}, .in_offset = {-src.zero_point}, "
                          f".out_offset = {dst.zero_point}, .act_min = {p['act_min']}, .act_max = {p['act_max']}, "
                          f".kind = {KERNEL_OPS[step.op]}, .wbits = {f['wbits']}, .w = {f['w']}, "
                          f".levels = {f['levels']}, .lv_stride = {f['lv_stride']}, .b16 = {f['b16']}, "
                          f".b32 = {f['b32']}, .mult = {f['mult']}, .shift = {f['shift']}}};\n")
            # a function per layer: the kernel inlined with the layer's constants folded in
            if i in memory.in_place and step.op == "conv":
                steps.append(f"static TQ_NOINLINE void tq_step{i}(int8_t *buf) {{ tq_pointwise_in_place(&tq_l{i}, buf); }}\n")
                calls.append(f"  tq_step{i}({y});")
            else:
                kernel = "tq_depthwise_run" if step.op == "depthwise" else "tq_conv_run"
                steps.append(f"static TQ_NOINLINE void tq_step{i}(const int8_t *in, int8_t *out) {{ {kernel}(&tq_l{i}, in, out); }}\n")
                calls.append(f"  tq_step{i}({x}, {y});")
        elif step.op == "mean":
            calls.append(f"  tq_mean({x}, {y}, {src.shape[1] * src.shape[2]}, {src.shape[3]}, {-src.zero_point}, "
                         f"{dst.zero_point}, {p['multiplier']}, {p['shift']});")
            constant_bytes += 8
        elif step.op == "avgpool":
            (kh, kw), (sh, sw), (ph, pw) = p["filter"], p["stride"], p["pad"]
            calls.append(f"  tq_avgpool({x}, {y}, {src.shape[1]}, {src.shape[2]}, {src.shape[3]}, {dst.shape[1]}, "
                         f"{dst.shape[2]}, {kh}, {kw}, {sh}, {sw}, {ph}, {pw}, {p['act_min']}, {p['act_max']});")
        elif step.op == "reshape":
            if step.output == program.output:
                calls.append(f"  for (int i = 0; i < {dst.size}; ++i) output[i] = {x}[i];")
        elif step.op == "softmax":
            calls.append(f"  tq_softmax({x}, {y}, {dst.size}, {p['multiplier']}, {p['left_shift']}, {p['diff_min']});")
            constant_bytes += 12
    inp, outp = program.tensors[program.input], program.tensors[program.output]
    g = guard or name.upper()
    in_place_pointwise = any(program.steps[i].op == "conv" for i in memory.in_place)
    # the kernels' statics: int16 weight rows, a depthwise plane, an im2col column, an in-place pixel
    scratch = (2 * max(4 * max_row, 9) + max(memory.plane_bytes, 1) + max_row + max_row * in_place_pointwise
               if ops & set(KERNEL_OPS) else 0)
    scratch_macro = f"#define {g}_SCRATCH_BYTES {scratch}  /* the kernels' static scratch: weight rows, a channel plane, a pixel */\n"
    helium_scratch = scratch + 4 * max_oc if scratch else 0
    if scratch:
        # Helium's kernels keep each output channel's base (bias and offset share) beside the rows
        scratch_macro = (f"#if defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)\n"
                         f"#define {g}_SCRATCH_BYTES {helium_scratch}  /* the kernels' static scratch: weight rows "
                         f"and their channels' bases, a channel plane, a pixel */\n#else\n{scratch_macro}#endif\n")
    if settings:
        contract = f'#include "{settings}"  /* input and output: sizes, scales, zero points, labels */\n'
    else:
        contract = (f"#define {g}_INPUT_SIZE {inp.size}  /* int8, {'x'.join(map(str, inp.shape[1:]))} (HWC) */\n"
                    f"#define {g}_OUTPUT_SIZE {outp.size}\n"
                    f"#define {g}_INPUT_SCALE {inp.scale!r}f\n#define {g}_INPUT_ZERO_POINT {inp.zero_point}\n"
                    f"#define {g}_OUTPUT_SCALE {outp.scale!r}f\n#define {g}_OUTPUT_ZERO_POINT {outp.zero_point}\n")
    header = f"""/* {name}: generated by tinyq (export --target aot). One call, no allocation, no TFLM. */
#ifndef {g}_AOT_H
#define {g}_AOT_H
#include <stdint.h>
{contract}#ifdef __cplusplus
extern "C" {{
#endif
#define {g}_BUFFER_BYTES {memory.size}  /* the static activation buffer, planned ahead of time */
{scratch_macro}/* Runs the model on input ({inp.size} int8 values, HWC) into output ({outp.size} int8 scores);
   returns 0. Not reentrant: one static buffer serves every call. */
int {name}_invoke(const int8_t *input, int8_t *output);
#ifdef __cplusplus
}}
#endif
#endif
"""
    source = "\n".join([
        f"/* {name}: generated by tinyq (export --target aot); see {name}.h. */",
        f'#include "{name}.h"',
        KERNELS_COMMON,
        (f"#define TQ_MAX_ROW {max_row}\n#define TQ_MAX_PLANE {max(memory.plane_bytes, 1)}\n"
         f"#define TQ_MAX_OC {max_oc}\n" + _layer_kernel(wbits))
        if ops & set(KERNEL_OPS) else "",
        POINTWISE_IN_PLACE_KERNEL if in_place_pointwise else "",
        MEAN_KERNEL if "mean" in ops else "",
        AVGPOOL_KERNEL if "avgpool" in ops else "",
        SOFTMAX_KERNEL if "softmax" in ops else "",
        (f"static int32_t tq_buffer_words[{-(-memory.size // 4)}]; /* int32: 4-byte aligned */\n"
         "#define tq_buffer ((int8_t *)tq_buffer_words)") if memory.size else "/* no activation buffer: one step */",
        "".join(consts), "".join(layers), "".join(steps),
        f"int {name}_invoke(const int8_t *input, int8_t *output) {{",
        *calls,
        "  return 0;",
        "}",
    ])
    return Generated(header, source, memory.size, scratch, helium_scratch, constant_bytes, packed_bytes)


def _pointer(program: Program, memory: MemoryPlan, tensor: int) -> str:
    while tensor in memory.alias and tensor not in memory.offsets and tensor != program.input:
        tensor = memory.alias[tensor]
    if tensor == program.input:
        return "input"
    if tensor == program.output:
        return "output"
    return f"(tq_buffer + {memory.offsets[tensor]})"


KERNELS_COMMON = r"""
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__ARM_FEATURE_DSP) || defined(__ARM_FEATURE_SAT)
#include <arm_acle.h> /* SMLAD, SXTAB16, QADD, SSAT */
#endif
#if defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)
#include <arm_mve.h> /* Helium (Cortex-M55, M85): the integer vector kernels */
#define TQ_MVE 1
#endif

#if defined(__GNUC__)
#define TQ_INLINE static inline __attribute__((always_inline))
#else
#define TQ_INLINE static inline
#endif

/* TFLite's fixed-point arithmetic, as its reference kernels compute it. */
TQ_INLINE int32_t tq_srdhm(int32_t a, int32_t b) { /* SaturatingRoundingDoublingHighMul */
  /* TFLite nudges by 2^30 or 1 - 2^30 and divides toward zero; adding 2^30 and shifting right (one
     SMLAL on Arm, as CMSIS-NN does it) rounds every product to the same integer without a 64-bit division */
  if (a == b && a == INT32_MIN) return INT32_MAX;
  return (int32_t)(((int64_t)a * (int64_t)b + (1LL << 30)) >> 31);
}
TQ_INLINE int32_t tq_rdbp(int32_t x, int e) { /* RoundingDivideByPOT */
  const int32_t mask = (int32_t)((1u << e) - 1u);
  const int32_t rem = x & mask;
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> e) + (rem > threshold ? 1 : 0);
}
TQ_INLINE int32_t tq_mbqm(int32_t x, int32_t q, int shift) { /* MultiplyByQuantizedMultiplier */
  int left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
  return tq_rdbp(tq_srdhm((int32_t)((uint32_t)x << left), q), right);
}
"""


def _layer_kernel(wbits: set[int]) -> str:
    fetch = []
    if 8 in wbits:
        fetch.append("  if (l->wbits == 8) return (int8_t)l->w[k];")
    if 4 in wbits:
        fetch.append("  if (l->wbits == 4) return (int8_t)((int8_t)(l->w[k >> 1] >> ((k & 1) * 4) << 4) >> 4);")
    if 2 in wbits:
        fetch.append("  if (l->wbits == 2) return l->levels[o * l->lv_stride + ((l->w[k >> 2] >> ((k & 3) * 2)) & 3)];")
    return r"""
enum { TQ_CONV, TQ_DEPTHWISE, TQ_FC };
typedef struct {
  int32_t ih, iw, ic, oh, ow, oc, kh, kw, sh, sw, dh, dw, ph, pw, dm;
  int32_t hp, wp;          /* depthwise: the bordered plane's rows and columns */
  int32_t in_offset, out_offset, act_min, act_max;
  uint8_t kind, wbits, lv_stride, resident;
  uint8_t left, fast;       /* left: some channel's shift is positive; fast: every shift in -23..-1 */
  const uint8_t *w;        /* weights as stored (tinyq.aot.codegen's docstring) */
  const int8_t *levels;    /* 2-bit: the four levels, per channel when lv_stride is 4 */
  const int16_t *b16;      /* biases: one of these two */
  const int32_t *b32;
  const int32_t *mult;
  const int8_t *shift;
} tq_layer;

/* weight k (flatbuffer order) of output channel o, unpacked from flash as it is read */
static inline int32_t tq_weight(const tq_layer *l, int32_t k, int o) {
  (void)o; /* the output channel picks a 2-bit layer's levels */
""" + "\n".join(fetch) + r"""
  return 0;
}

TQ_INLINE int32_t tq_bias(const tq_layer *l, int o) { return l->b16 ? l->b16[o] : l->b32[o]; }

/* an int32 sum (bias included) to its int8 output: requantized by (mult, shift), then the activation's clamp */
TQ_INLINE int8_t tq_out(const tq_layer *l, int32_t acc, int32_t mult, int shift) {
  const int left = l->left && shift > 0 ? shift : 0;
  /* QuantizeMultiplier's multipliers lie in [2^30, 2^31) or are 0, never INT32_MIN: no saturation case */
  const int32_t high = (int32_t)(((int64_t)(int32_t)((uint32_t)acc << left) * mult + (1LL << 30)) >> 31);
  int32_t y;
#if defined(__ARM_FEATURE_DSP)
  if (l->fast) {
    /* every right shift e in 1..23: RoundingDivideByPOT is (high + 2^(e-1) - (high < 0)) >> e; where
       the saturating add (QADD) saturates, both that and the exact sum are at least 2^(31-e) - 1 >= 255
       and clamp alike */
    const int e = -shift;
    y = __qadd(high, (1 << (e - 1)) + (high >> 31)) >> e;
  } else
#endif
  y = tq_rdbp(high, left ? 0 : -shift);
  y += l->out_offset;
#if defined(__ARM_FEATURE_SAT)
  if (l->act_min == -128 && l->act_max == 127) return (int8_t)__ssat(y, 8);
#endif
  return (int8_t)(y < l->act_min ? l->act_min : y > l->act_max ? l->act_max : y);
}

#if defined(TQ_MVE)
/* tq_out in four lanes: VQRDMULH is tq_srdhm's rounding high multiply; adding -1 to a negative value before
   VRSHL's rounding right shift (half up) makes RoundingDivideByPOT's half away from zero (as CMSIS-NN's
   arm_requantize_mve) */
TQ_INLINE int32x4_t tq_out4(const tq_layer *l, int32x4_t acc, int32x4_t mult, int32x4_t shift) {
  const int32x4_t zero = vdupq_n_s32(0), right = vminq_s32(shift, zero);
  int32x4_t v = vqrdmulhq_s32(l->left ? vshlq_s32(acc, vmaxq_s32(shift, zero)) : acc, mult);
  v = vqaddq_s32(v, vshrq_n_s32(vandq_s32(v, right), 31));
  v = vaddq_n_s32(vrshlq_s32(v, right), l->out_offset);
  return vminq_s32(vmaxq_s32(v, vdupq_n_s32(l->act_min)), vdupq_n_s32(l->act_max));
}
#endif

#if defined(__GNUC__)
#define TQ_NOINLINE __attribute__((noinline))
#define TQ_ALIGNED __attribute__((aligned(4)))
#else
#define TQ_NOINLINE
#define TQ_ALIGNED
#define __builtin_assume_aligned(p, n) (p)
#endif

/* Conv, fully connected and pointwise layers read the weights of four output channels at a time as int16
   rows, unpacked once from flash and interleaved for one pointer: for each whole block of four inputs
   (k = 4b .. 4b + 3) channel g's weights of inputs 4b, 4b + 2, 4b + 1, 4b + 3 at 16 b + 4 g (the pairs
   SXTAB16 makes of a word of four int8 inputs), then for each remaining input k channel g's weight at
   4 k + g. Channels past the last are zeros. */
static int16_t tq_rows[4 * TQ_MAX_ROW < 9 ? 9 : 4 * TQ_MAX_ROW] TQ_ALIGNED; /* 9: a depthwise 3x3 reads nine */

#if defined(TQ_MVE)
/* Helium: the four channels' rows as int8, channel g's weight k at byte g * n + k (VMLADAV multiplies
   sixteen int8 pairs and adds them to a scalar), and beside them each channel's base, its bias plus the
   input offset's share: sum of w * (x + off) + bias = sum of w * x + (bias + off * sum of w) */
static int32_t tq_base[TQ_MAX_OC];

/* weights k .. k + 15 of output channel o (the lanes p lets through), unpacked from flash in vectors: a
   byte gathered for each lane, its lane's bits shifted down; 2-bit codes pick the channel's levels by a
   second gather */
TQ_INLINE int8x16_t tq_weights16(const tq_layer *l, int32_t k, int o, mve_pred16_t p) {
  if (l->wbits == 8) return vldrbq_z_s8((const int8_t *)l->w + k, p);
  if (l->wbits == 4) { /* even k in the low nibble: shifted to the top, then down with its sign */
    const uint8x16_t t = vidupq_n_u8((uint32_t)(k & 1), 1);
    const uint8x16_t bytes = vldrbq_gather_offset_z_u8(l->w + (k >> 1), vshrq_n_u8(t, 1), p);
    const int8x16_t up = vsubq_s8(vdupq_n_s8(4), vreinterpretq_s8_u8(vshlq_n_u8(vandq_u8(t, vdupq_n_u8(1)), 2)));
    return vshrq_n_s8(vshlq_s8(vreinterpretq_s8_u8(bytes), up), 4);
  }
  const uint8x16_t t = vidupq_n_u8((uint32_t)(k & 3), 1); /* 2-bit: code k at bits 2 (k mod 4) */
  const uint8x16_t bytes = vldrbq_gather_offset_z_u8(l->w + (k >> 2), vshrq_n_u8(t, 2), p);
  const int8x16_t down = vnegq_s8(vreinterpretq_s8_u8(vshlq_n_u8(vandq_u8(t, vdupq_n_u8(3)), 1)));
  const uint8x16_t codes = vandq_u8(vshlq_u8(bytes, down), vdupq_n_u8(3));
  return vldrbq_gather_offset_z_s8(l->levels + o * l->lv_stride, codes, p);
}

TQ_INLINE void tq_unpack_rows(const tq_layer *l, int16_t *rows, int o, int32_t n) {
  for (int g = 0; g < 4; ++g) {
    int8_t *r = (int8_t *)rows + g * n;
    int32_t sum = 0;
    for (int32_t k = 0; k < n; k += 16) {
      const mve_pred16_t p = vctp8q((uint32_t)(n - k));
      const int8x16_t w = o + g < l->oc ? tq_weights16(l, (o + g) * n + k, o + g, p) : vdupq_n_s8(0);
      vstrbq_p_s8(r + k, w, p);
      sum = vaddvaq_p_s8(sum, w, p);
    }
    tq_base[o + g] = o + g < l->oc ? tq_bias(l, o + g) + sum * l->in_offset : 0;
  }
}

/* lane g: sum over k < n of row g's weight k * x[k] (the base is tq_group's), sixteen at a time,
   the last block's lanes past n predicated off (neither read nor added); inlined, the layer's n folded */
TQ_INLINE int32x4_t tq_dot4v(const int16_t *w, const int8_t *x, int32_t n) {
  const int8_t *r = (const int8_t *)w;
  int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  for (int32_t k = 0; k < n; k += 16) {
    const mve_pred16_t p = vctp8q((uint32_t)(n - k));
    const int8x16_t v = vldrbq_z_s8(x + k, p);
    a0 = vmladavaq_s8(a0, v, vldrbq_z_s8(r + k, p));
    a1 = vmladavaq_s8(a1, v, vldrbq_z_s8(r + n + k, p));
    a2 = vmladavaq_s8(a2, v, vldrbq_z_s8(r + 2 * n + k, p));
    a3 = vmladavaq_s8(a3, v, vldrbq_z_s8(r + 3 * n + k, p));
  }
  return vsetq_lane_s32(a3, vsetq_lane_s32(a2, vsetq_lane_s32(a1, vdupq_n_s32(a0), 1), 2), 3);
}
#else
static void tq_unpack_rows(const tq_layer *l, int16_t *rows, int o, int32_t n) {
  const int32_t whole = n & ~3;
  for (int g = 0; g < 4; ++g)
    for (int32_t k = 0; k < n; ++k) {
      const int32_t at = k < whole ? 4 * (k & ~3) + 4 * g + ((k & 3) == 1 ? 2 : (k & 3) == 2 ? 1 : (k & 3)) : 4 * k + g;
      rows[at] = (int16_t)(o + g < l->oc ? tq_weight(l, (o + g) * n + k, o + g) : 0);
    }
}

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32)
/* Cortex-M4/M7/M33/M55: a word of four int8 inputs becomes two pairs of int16 with the input offset added
   (SXTAB16), and SMLAD multiplies a pair by a pair of weights and adds both products; the sums are the
   same integers (weights and x + off in -255..255, int32 accumulation) */
TQ_INLINE int32_t tq_word(const void *p) { int32_t v; memcpy(&v, p, 4); return v; }
#endif

/* acc[g] = sum over k < n of row g's weight k * (x[k] + off), g < 4, rows as tq_unpack_rows lays them:
   a leaf of its own (not inlined), so the compiler keeps its values in registers */
static TQ_NOINLINE void tq_dot4(const int16_t *w, const int8_t *x, int32_t n, int32_t off, int32_t *acc) {
  int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  const int8_t *const end = x + (n & ~3);
#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32)
  const int32_t offs = (int32_t)((uint32_t)(uint16_t)off | ((uint32_t)(uint16_t)off << 16));
  const int16_t *wa = (const int16_t *)__builtin_assume_aligned(w, 4); /* rows start on words: LDRD */
  for (; x < end; x += 4, wa += 16) {
    const int32_t v = tq_word(x);
    const int32_t lo = __sxtab16(offs, v), hi = __sxtab16(offs, (int32_t)((uint32_t)v >> 8));
    a0 = __smlad(tq_word(wa), lo, a0);
    a0 = __smlad(tq_word(wa + 2), hi, a0);
    a1 = __smlad(tq_word(wa + 4), lo, a1);
    a1 = __smlad(tq_word(wa + 6), hi, a1);
    a2 = __smlad(tq_word(wa + 8), lo, a2);
    a2 = __smlad(tq_word(wa + 10), hi, a2);
    a3 = __smlad(tq_word(wa + 12), lo, a3);
    a3 = __smlad(tq_word(wa + 14), hi, a3);
  }
  w = wa;
#else
  for (; x < end; x += 4, w += 16) {
    const int32_t x0 = x[0] + off, x1 = x[1] + off, x2 = x[2] + off, x3 = x[3] + off;
    a0 += w[0] * x0 + w[1] * x2 + w[2] * x1 + w[3] * x3;
    a1 += w[4] * x0 + w[5] * x2 + w[6] * x1 + w[7] * x3;
    a2 += w[8] * x0 + w[9] * x2 + w[10] * x1 + w[11] * x3;
    a3 += w[12] * x0 + w[13] * x2 + w[14] * x1 + w[15] * x3;
  }
#endif
  for (int32_t k = n & 3; k > 0; --k, ++x, w += 4) {
    const int32_t v = *x + off;
    a0 += w[0] * v;
    a1 += w[1] * v;
    a2 += w[2] * v;
    a3 += w[3] * v;
  }
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  acc[3] = a3;
}
#endif

/* output channels o .. o + 3 (those that exist) of one position, from the inputs x and the group's rows */
TQ_INLINE void tq_group(const tq_layer *l, const int16_t *rows, const int8_t *x, int32_t n, int o, int8_t *y) {
  const int group = l->oc - o < 4 ? l->oc - o : 4;
#if defined(TQ_MVE)
  const mve_pred16_t p = vctp32q((uint32_t)group);
  const int32x4_t a = vaddq_s32(tq_dot4v(rows, x, n), vld1q_s32(tq_base + o));
  vstrbq_p_s32(y, tq_out4(l, a, vldrwq_z_s32(l->mult + o, p), vldrbq_z_s32(l->shift + o, p)), p);
#else
  int32_t acc[4];
  tq_dot4(rows, x, n, l->in_offset, acc);
  for (int g = 0; g < group; ++g) y[g] = tq_out(l, acc[g] + tq_bias(l, o + g), l->mult[o + g], l->shift[o + g]);
#endif
}

static int8_t tq_plane[TQ_MAX_PLANE]; /* one input channel bordered with its padding (a depthwise input) */

/* depthwise, one output channel at a time from its input channel's plane, copied first (so the output may
   be written over the input, in place) with the input's zero point where the padding is: every tap then
   reads x + off, and sum of w * (x + off) = sum of w * x + off * sum of w, without bounds checks */
TQ_INLINE void tq_depthwise_run(const tq_layer *l, const int8_t *in, int8_t *out) {
  const int32_t hp = l->hp, wp = l->wp, taps = l->kh * l->kw, off = l->in_offset;
  const int8_t zp = (int8_t)-off;
  int16_t *w = tq_rows;
#if defined(TQ_MVE)
  const uint16x8_t gather = vmulq_n_u16(vidupq_n_u16(0, 1), (uint16_t)l->ic);
#endif
  for (int o = 0; o < l->oc; ++o) {
    const int8_t *src = in + o / l->dm;
    int8_t *q = tq_plane;
    const int32_t first = l->pw < wp ? l->pw : wp, last = l->pw + l->iw < wp ? l->pw + l->iw : wp;
    for (int32_t py = 0; py < hp; ++py, q += wp) {
      const int32_t y = py - l->ph;
      int32_t px = 0;
      if (y >= 0 && y < l->ih) {
        for (; px < first; ++px) q[px] = zp;
        const int8_t *s = src + (y * l->iw + px - l->pw) * l->ic;
#if defined(TQ_MVE)
        for (; px < last; px += 8, s += 8 * l->ic) { /* eight at a time, gathered at the channel stride */
          const mve_pred16_t pr = vctp16q((uint32_t)(last - px));
          vstrbq_p_s16(q + px, vldrbq_gather_offset_z_s16(s, gather, pr), pr);
        }
        px = last;
#else
        for (; px < last; ++px, s += l->ic) q[px] = *s;
#endif
      }
      for (; px < wp; ++px) q[px] = zp;
    }
    int32_t base = tq_bias(l, o);
    for (int32_t i = 0; i < taps; ++i) {
      w[i] = (int16_t)tq_weight(l, o + i * l->oc, o);
      base += w[i] * off;
    }
    const int32_t mult = l->mult[o];
    const int shift = l->shift[o];
    const int32_t row = l->dh * wp, col = l->dw;
    int8_t *y = out + o;
#if defined(TQ_MVE)
    /* four output columns at a time, one int32 lane each: each tap's four inputs loaded widened (gathered
       at the stride), multiplied by the tap's weight and added; the outputs stored at the channel's stride */
    const uint32x4_t lanes = vmulq_n_u32(vidupq_n_u32(0, 1), (uint32_t)l->sw);
    const uint32x4_t outs = vmulq_n_u32(vidupq_n_u32(0, 1), (uint32_t)l->oc);
    const int32x4_t vmult = vdupq_n_s32(mult), vshift = vdupq_n_s32(shift);
#define TQ_TAPS4(q) (l->sw == 1 ? vldrbq_z_s32((q), pr) : vldrbq_gather_offset_z_s32((q), lanes, pr))
    /* a 3x3 kernel's weights in registers (as the plain path's); tq_rows holds at least nine */
    const int32_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5], w6 = w[6], w7 = w[7], w8 = w[8];
    for (int oy = 0; oy < l->oh; ++oy) {
      const int8_t *p = tq_plane + oy * l->sh * wp;
      int8_t *yr = y + oy * l->ow * l->oc;
      for (int ox = 0; ox < l->ow; ox += 4, p += 4 * l->sw, yr += 4 * l->oc) {
        const mve_pred16_t pr = vctp32q((uint32_t)(l->ow - ox));
        int32x4_t acc = vdupq_n_s32(base);
        if (l->kh == 3 && l->kw == 3) {
          acc = vmlaq_n_s32(acc, TQ_TAPS4(p), w0);
          acc = vmlaq_n_s32(acc, TQ_TAPS4(p + col), w1);
          acc = vmlaq_n_s32(acc, TQ_TAPS4(p + 2 * col), w2);
          acc = vmlaq_n_s32(acc, TQ_TAPS4(p + row), w3);
          acc = vmlaq_n_s32(acc, TQ_TAPS4(p + row + col), w4);
          acc = vmlaq_n_s32(acc, TQ_TAPS4(p + row + 2 * col), w5);
          acc = vmlaq_n_s32(acc, TQ_TAPS4(p + 2 * row), w6);
          acc = vmlaq_n_s32(acc, TQ_TAPS4(p + 2 * row + col), w7);
          acc = vmlaq_n_s32(acc, TQ_TAPS4(p + 2 * row + 2 * col), w8);
        } else {
          for (int fy = 0; fy < l->kh; ++fy)
            for (int fx = 0; fx < l->kw; ++fx) acc = vmlaq_n_s32(acc, TQ_TAPS4(p + fy * row + fx * col), w[fy * l->kw + fx]);
        }
        vstrbq_scatter_offset_p_s32(yr, outs, tq_out4(l, acc, vmult, vshift), pr);
      }
    }
#undef TQ_TAPS4
#else
    if (l->kh == 3 && l->kw == 3) { /* the common case, unrolled, its weights in registers */
      const int32_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5], w6 = w[6], w7 = w[7], w8 = w[8];
      for (int oy = 0; oy < l->oh; ++oy) {
        const int8_t *p = tq_plane + oy * l->sh * wp;
        for (int ox = 0; ox < l->ow; ++ox, p += l->sw, y += l->oc) {
          int32_t acc = base + w0 * p[0] + w1 * p[col] + w2 * p[2 * col];
          acc += w3 * p[row] + w4 * p[row + col] + w5 * p[row + 2 * col];
          acc += w6 * p[2 * row] + w7 * p[2 * row + col] + w8 * p[2 * row + 2 * col];
          *y = tq_out(l, acc, mult, shift);
        }
      }
    } else {
      for (int oy = 0; oy < l->oh; ++oy)
        for (int ox = 0; ox < l->ow; ++ox, y += l->oc) {
          const int8_t *p = tq_plane + oy * l->sh * wp + ox * l->sw;
          int32_t acc = base;
          for (int fy = 0; fy < l->kh; ++fy)
            for (int fx = 0; fx < l->kw; ++fx) acc += w[fy * l->kw + fx] * p[fy * row + fx * col];
          *y = tq_out(l, acc, mult, shift);
        }
    }
#endif
  }
}

static int8_t tq_col[TQ_MAX_ROW]; /* one output position's inputs (im2col), padding as the input zero point */

/* the inputs of output position (oy, ox) in kernel order: the pixel itself for a 1x1 kernel without
   padding, else gathered into tq_col */
TQ_INLINE const int8_t *tq_column(const tq_layer *l, const int8_t *in, int oy, int ox) {
  const int y0 = oy * l->sh - l->ph, x0 = ox * l->sw - l->pw;
  if (l->kh == 1 && l->kw == 1 && l->ph == 0 && l->pw == 0) return in + (y0 * l->iw + x0) * l->ic;
  int8_t *c = tq_col;
  if (l->dw == 1 && y0 >= 0 && y0 + (l->kh - 1) * l->dh < l->ih && x0 >= 0 && x0 + l->kw <= l->iw) {
    /* inside the image: each kernel row's taps are one run of kw * ic bytes */
    for (int fy = 0; fy < l->kh; ++fy, c += l->kw * l->ic)
      memcpy(c, in + ((y0 + fy * l->dh) * l->iw + x0) * l->ic, (size_t)(l->kw * l->ic));
    return tq_col;
  }
  for (int fy = 0; fy < l->kh; ++fy) {
    const int yy = y0 + fy * l->dh;
    for (int fx = 0; fx < l->kw; ++fx, c += l->ic) {
      const int xx = x0 + fx * l->dw;
      if (yy >= 0 && yy < l->ih && xx >= 0 && xx < l->iw) {
        const int8_t *px = in + (yy * l->iw + xx) * l->ic;
        for (int32_t k = 0; k < l->ic; ++k) c[k] = px[k];
      } else {
        for (int32_t k = 0; k < l->ic; ++k) c[k] = (int8_t)-l->in_offset;
      }
    }
  }
  return tq_col;
}

/* conv (OHWI) and fully connected (OI, as a 1x1 conv), four output channels at a time: with every
   channel's rows unpacked at once (resident) when they fit, position by position; else group by group */
TQ_INLINE void tq_conv_run(const tq_layer *l, const int8_t *in, int8_t *out) {
  const int32_t n = l->kh * l->kw * l->ic;
  if (l->resident) {
    for (int o = 0; o < l->oc; o += 4) tq_unpack_rows(l, tq_rows + o * n, o, n);
    for (int oy = 0; oy < l->oh; ++oy)
      for (int ox = 0; ox < l->ow; ++ox) {
        const int8_t *x = tq_column(l, in, oy, ox);
        int8_t *y = out + (oy * l->ow + ox) * l->oc;
        for (int o = 0; o < l->oc; o += 4) tq_group(l, tq_rows + o * n, x, n, o, y + o);
      }
    return;
  }
  for (int o = 0; o < l->oc; o += 4) {
    tq_unpack_rows(l, tq_rows, o, n);
    for (int oy = 0; oy < l->oh; ++oy)
      for (int ox = 0; ox < l->ow; ++ox)
        tq_group(l, tq_rows, tq_column(l, in, oy, ox), n, o, out + (oy * l->ow + ox) * l->oc + o);
  }
}
"""


MEAN_KERNEL = r"""
/* MEAN over height and width, as TFLM's int8 reference kernel */
static void tq_mean(const int8_t *in, int8_t *out, int n, int channels, int32_t in_offset, int32_t out_offset,
                    int32_t q, int shift) {
  for (int c = 0; c < channels; ++c) {
    int32_t total = 0;
    for (int i = 0; i < n; ++i) total += in[i * channels + c] + in_offset;
    int32_t y = tq_mbqm(total, q, shift) + out_offset;
    out[c] = (int8_t)(y < -128 ? -128 : y > 127 ? 127 : y);
  }
}
"""

AVGPOOL_KERNEL = r"""
/* AVERAGE_POOL_2D, as TFLM's int8 reference kernel: the taps inside the image, rounded half away from zero */
static void tq_avgpool(const int8_t *in, int8_t *out, int ih, int iw, int c, int oh, int ow, int kh, int kw,
                       int sh, int sw, int ph, int pw, int32_t act_min, int32_t act_max) {
  for (int oy = 0; oy < oh; ++oy) {
    const int y0 = oy * sh - ph, ya = y0 < 0 ? 0 : y0, yb = y0 + kh > ih ? ih : y0 + kh;
    for (int ox = 0; ox < ow; ++ox) {
      const int x0 = ox * sw - pw, xa = x0 < 0 ? 0 : x0, xb = x0 + kw > iw ? iw : x0 + kw;
      const int32_t count = (yb - ya) * (xb - xa);
      for (int k = 0; k < c; ++k) {
        int32_t total = 0;
        for (int y = ya; y < yb; ++y)
          for (int x = xa; x < xb; ++x) total += in[(y * iw + x) * c + k];
        int32_t avg = total > 0 ? (total + count / 2) / count : (total - count / 2) / count;
        avg = avg < act_min ? act_min : avg > act_max ? act_max : avg;
        out[(oy * ow + ox) * c + k] = (int8_t)avg;
      }
    }
  }
}
"""

POINTWISE_IN_PLACE_KERNEL = r"""
/* pointwise (1x1, stride 1) over its own input: every output channel's weights unpacked first (rows of
   the input's width, four channels at a time), then pixel by pixel, each pixel's input copied before its
   outputs overwrite it; from the last pixel when the layer widens its input (pixel p's output starts at
   p * oc, past every input not yet read), from the first when it narrows it */
static int8_t tq_pixel[TQ_MAX_ROW];

TQ_INLINE void tq_pointwise_in_place(const tq_layer *l, int8_t *buf) {
  const int32_t ic = l->ic, oc = l->oc, pixels = l->oh * l->ow;
  for (int o = 0; o < oc; o += 4) tq_unpack_rows(l, tq_rows + o * ic, o, ic);
  const int widen = oc > ic;
  for (int32_t k = 0; k < pixels; ++k) {
    const int32_t p = widen ? pixels - 1 - k : k;
#if defined(TQ_MVE)
    for (int32_t c = 0; c < ic; c += 16) {
      const mve_pred16_t pr = vctp8q((uint32_t)(ic - c));
      vstrbq_p_s8(tq_pixel + c, vldrbq_z_s8(buf + p * ic + c, pr), pr);
    }
#else
    for (int32_t c = 0; c < ic; ++c) tq_pixel[c] = buf[p * ic + c];
#endif
    for (int o = 0; o < oc; o += 4) tq_group(l, tq_rows + o * ic, tq_pixel, ic, o, buf + p * oc + o);
  }
}
"""

SOFTMAX_KERNEL = r"""
/* int8 softmax (scale 1/256, zero point -128): gemmlowp's fixed point, as TFLM's reference */
static int32_t tq_add(int32_t a, int32_t b) { return (int32_t)((uint32_t)a + (uint32_t)b); }
static int32_t tq_mul_pot(int32_t x, int e) {
  if (e < 0) return tq_rdbp(x, -e);
  int64_t v = (int64_t)x * (1LL << e);
  return v > INT32_MAX ? INT32_MAX : v < INT32_MIN ? INT32_MIN : (int32_t)v;
}
static int32_t tq_exp_on_interval(int32_t a) { /* exp on [-1/4, 0), Q0.31 */
  const int32_t x = tq_add(a, 1 << 28);
  const int32_t x2 = tq_srdhm(x, x), x3 = tq_srdhm(x2, x), x4 = tq_srdhm(x2, x2);
  const int32_t poly = tq_rdbp(tq_add(tq_srdhm(tq_add(tq_rdbp(x4, 2), x3), 715827883), x2), 1);
  return tq_add(1895147668, tq_srdhm(1895147668, tq_add(x, poly)));
}
static int32_t tq_exp_on_negative_values(int32_t a) { /* a <= 0 in Q5.26, result in Q0.31 */
  static const int32_t m[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
  const int32_t quarter = 1 << 24;
  const int32_t a_mod = tq_add(a & (quarter - 1), -quarter);
  int32_t result = tq_exp_on_interval(tq_mul_pot(a_mod, 5));
  const int32_t rem = tq_add(a_mod, -a);
  for (int k = 0; k < 7; ++k)
    if (rem & (1 << (24 + k))) result = tq_srdhm(result, m[k]);
  return a == 0 ? INT32_MAX : result;
}
static int32_t tq_one_over_one_plus_x(int32_t a) { /* 1 / (1 + a), a in [0, 1) Q0.31 */
  const int64_t s = (int64_t)a + INT32_MAX;
  const int32_t half = (int32_t)((s + (s >= 0 ? 1 : -1)) / 2);
  int32_t x = tq_add(1515870810, tq_srdhm(half, -1010580540));
  for (int i = 0; i < 3; ++i) {
    const int32_t one_minus = tq_add(1 << 29, -tq_srdhm(half, x));
    x = tq_add(x, tq_mul_pot(tq_srdhm(x, one_minus), 2));
  }
  return tq_mul_pot(x, 1);
}
static void tq_softmax(const int8_t *in, int8_t *out, int n, int32_t q, int left, int32_t diff_min) {
  int max = in[0];
  for (int i = 1; i < n; ++i) if (in[i] > max) max = in[i];
  int32_t total = 0;
  for (int i = 0; i < n; ++i) {
    const int32_t diff = in[i] - max;
    if (diff >= diff_min) total += tq_rdbp(tq_exp_on_negative_values(tq_srdhm(diff * (1 << left), q)), 12);
  }
  int headroom = 0;
  while (headroom < 32 && !((uint32_t)total & (0x80000000u >> headroom))) ++headroom;
  const int over_unit = 12 - headroom;
  const int32_t shifted = (int32_t)(((uint32_t)total << headroom) - 0x80000000u);
  const int32_t scale = tq_one_over_one_plus_x(shifted);
  for (int i = 0; i < n; ++i) {
    const int32_t diff = in[i] - max;
    if (diff < diff_min) { out[i] = -128; continue; }
    const int32_t e = tq_exp_on_negative_values(tq_srdhm(diff * (1 << left), q));
    int32_t y = tq_rdbp(tq_srdhm(scale, e), over_unit + 31 - 8) - 128;
    out[i] = (int8_t)(y < -128 ? -128 : y > 127 ? 127 : y);
  }
}
"""
