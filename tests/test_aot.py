"""The ahead-of-time C engine (issue 31): packing with golden bytes, the memory plan, the C
kernels against their numpy specification, and real files against TFLM and tinyq's integer model."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tinyq.aot.codegen import generate, levels_and_codes, pack_2bit, pack_4bit
from tinyq.aot.lower import Program, Step, Tensor
from tinyq.aot.memory import plan_memory
from tinyq.aot.reference import accumulate, run, run_step
from tinyq.fixedpoint import quantize_multiplier, softmax_params

from conftest import needs_device_tools

MAIN = r"""
#include <stdio.h>
#include "model.h"
int main(void) {
  static int8_t in[MODEL_INPUT_SIZE];
  int8_t out[MODEL_OUTPUT_SIZE];
  while (fread(in, 1, sizeof in, stdin) == sizeof in) {
    model_invoke(in, out);
    fwrite(out, 1, sizeof out, stdout);
  }
  return 0;
}
"""


def test_2bit_packing_golden_bytes():
    """Four indices a byte, least significant first: element k in bits 2 (k % 4) .. 2 (k % 4) + 1."""
    assert pack_2bit(np.array([0, 1, 2, 3, 3, 2, 1, 0, 1])) == bytes([0b11100100, 0b00011011, 0b00000001])


def test_4bit_packing_golden_bytes():
    """Two int4 a byte, low nibble first, two's complement."""
    assert pack_4bit(np.array([-8, 7, -1, 0, 3])) == bytes([0x78, 0x0F, 0x03])


@pytest.mark.parametrize("shared", [True, False])
def test_levels_and_codes_give_the_weights_back(shared):
    rng = np.random.default_rng(0)
    if shared:
        w = rng.choice(np.array([-126, -42, 42, 126], np.int8), size=(6, 1, 1, 5))
    else:
        sets = rng.integers(-127, 128, size=(6, 4)).astype(np.int8)
        w = np.stack([rng.choice(s, size=(1, 1, 5)) for s in sets])
    levels, codes, is_shared = levels_and_codes(w, 0)
    assert is_shared == shared and codes.max() <= 3
    channel = np.arange(6)[:, None, None, None] * (0 if shared else 1)
    assert np.array_equal(levels[channel, codes], w)


def _program(rng, storage: str, x: np.ndarray) -> Program:
    """A small network of every op the engine computes, weights stored as ``storage``; each layer's
    multipliers and biases calibrated on ``x`` so its outputs spread over the int8 range."""
    def weights(shape, axis):
        if storage == "2bit":
            levels = rng.integers(-127, 128, size=(shape[axis], 4))
            idx = rng.integers(0, 4, size=shape)
            channel = np.arange(shape[axis]).reshape([-1 if d == axis else 1 for d in range(len(shape))])
            return levels[channel, idx].astype(np.int8)
        if storage == "int4":
            return rng.integers(-7, 8, size=shape).astype(np.int8)
        return rng.integers(-127, 128, size=shape).astype(np.int8)

    t = {0: Tensor(0, (1, 9, 9, 3), 1 / 255, -128), 1: Tensor(1, (1, 5, 5, 6), 0.05, -128),
         2: Tensor(2, (1, 5, 5, 6), 0.04, -128), 3: Tensor(3, (1, 5, 5, 8), 0.06, -128),
         8: Tensor(8, (1, 5, 5, 4), 0.06, -128), 9: Tensor(9, (1, 3, 2, 4), 0.05, -128),
         4: Tensor(4, (1, 1, 1, 4), 0.03, -128), 5: Tensor(5, (1, 4), 0.03, -128), 6: Tensor(6, (1, 3), 0.03, 5),
         7: Tensor(7, (1, 3), 1 / 256, -128)}
    program = Program(t, [], 0, 7)
    values = {0: x}

    def add(step: Step) -> None:
        p = step.params
        if step.op in ("conv", "depthwise", "fc"):
            p.update(bias=np.zeros(p["weights"].shape[3 if step.op == "depthwise" else 0], np.int64))
            acc = accumulate(program, step, values[step.inputs[0]]).reshape(-1, len(p["bias"])).astype(np.float64)
            q, shift = quantize_multiplier(50.0 / (acc.std(axis=0) + 1.0) * rng.uniform(0.8, 1.2, len(p["bias"])))
            p.update(bias=np.round(-acc.mean(axis=0) + rng.normal(0, 1, len(p["bias"])) * acc.std(axis=0)).astype(np.int64),
                     multiplier=q.astype(np.int64), shift=shift.astype(np.int64))
        program.steps.append(step)
        values[step.output] = run_step(program, step, values[step.inputs[0]])

    def layer(w, storage_, **extra):
        return {"weights": w, "storage": storage_, "act_min": -128, "act_max": int(rng.integers(60, 128)), **extra}

    add(Step("conv", [0], 1, layer(weights((6, 3, 3, 3), 0), storage, stride=(2, 2), dilation=(1, 1), pad=(1, 1))))
    add(Step("depthwise", [1], 2, layer(weights((1, 3, 3, 6), 3), storage, stride=(1, 1), dilation=(1, 1),
                                        pad=(1, 1), depth_multiplier=1)))
    # pointwise convs that widen (6 -> 8) and narrow (8 -> 4) their input: both run in place
    add(Step("conv", [2], 3, layer(weights((8, 1, 1, 6), 0), storage, stride=(1, 1), dilation=(1, 1), pad=(0, 0))))
    add(Step("conv", [3], 8, layer(weights((4, 1, 1, 8), 0), storage, stride=(1, 1), dilation=(1, 1), pad=(0, 0))))
    # a depthwise kernel that is not 3x3, at stride 2
    add(Step("depthwise", [8], 9, layer(weights((1, 3, 2, 4), 3), storage, stride=(2, 2), dilation=(1, 1),
                                        pad=(1, 0), depth_multiplier=1)))
    mq, ms = quantize_multiplier(0.05 / 0.03)
    bits = min((6).bit_length() - 1, 32, 31 + int(ms))
    add(Step("mean", [9], 4, {"multiplier": int((int(mq) << bits) // 6), "shift": int(ms) - bits, "count": 6}))
    add(Step("reshape", [4], 5))
    add(Step("fc", [5], 6, dict(layer(weights((3, 4), 0), storage), act_max=127)))
    sq, sl, dmin = softmax_params(0.03)
    add(Step("softmax", [6], 7, {"multiplier": sq, "left_shift": sl, "diff_min": dmin}))
    return program


def _compile(program: Program, folder) -> str:
    g = generate(program, "model")
    (folder / "model.h").write_text(g.header)
    (folder / "model.c").write_text(g.source)
    (folder / "main.c").write_text(MAIN)
    exe = folder / "run"
    r = subprocess.run(["gcc", "-O2", "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-o", str(exe),
                        str(folder / "main.c"), str(folder / "model.c")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return str(exe)


def _c_outputs(exe: str, x: np.ndarray, classes: int) -> np.ndarray:
    out = subprocess.run([exe], input=x.astype(np.int8).tobytes(), capture_output=True, check=True).stdout
    return np.frombuffer(out, np.int8).reshape(len(x), classes)


@pytest.mark.parametrize("storage", ["2bit", "int4", "int8"])
def test_c_kernels_compute_their_specification(tmp_path, storage):
    """Every op in C (compiled with -Wall -Wextra -pedantic -Werror) gives the numpy reference's int8 outputs."""
    rng = np.random.default_rng({"2bit": 1, "int4": 2, "int8": 3}[storage])
    x = rng.integers(-128, 128, size=(24, 9, 9, 3)).astype(np.int8)
    program = _program(rng, storage, x)
    expected = run(program, x)
    assert len(np.unique(expected, axis=0)) > len(x) // 2  # the outputs depend on the inputs
    assert np.array_equal(_c_outputs(_compile(program, tmp_path), x, 3), expected)


@pytest.mark.parametrize("board", ["m4", "m55"])
@pytest.mark.parametrize("storage", ["2bit", "int4", "int8"])
def test_c_kernels_on_cortex_m_compute_their_specification(tmp_path, storage, board):
    """The same on QEMU, compiled as tinyq device builds the engine: the M4's DSP path (SMLAD, SSAT, QADD)
    and the M55's Helium kernels (their own weight rows and vector requantization)."""
    from tinyq.device import boards, firmware, qemu

    needs_device_tools()
    rng = np.random.default_rng({"2bit": 1, "int4": 2, "int8": 3}[storage])
    x = rng.integers(-128, 128, size=(24, 9, 9, 3)).astype(np.int8)
    program = _program(rng, storage, x)
    target = boards.board(board)
    result = qemu.run(firmware.build_program(program, target, tmp_path / "fw").elf, target, x.reshape(len(x), -1))
    assert np.array_equal(np.asarray(result.outputs).reshape(len(x), 3), run(program, x))


def test_memory_plan_of_a_chain_is_in_place_or_disjoint():
    """Each step writes over its input (same offset) where its kernel allows it, else to bytes its input
    does not use; the caller's input and output are not in the buffer; the buffer is what one step needs."""
    rng = np.random.default_rng(4)
    program = _program(rng, "int8", rng.integers(-128, 128, size=(4, 9, 9, 3)).astype(np.int8))
    plan = plan_memory(program)
    assert plan.in_place == {1, 2, 3, 4}  # both depthwise convs, and both pointwise convs
    assert plan.alias == {5: 4} and 0 not in plan.offsets and 7 not in plan.offsets
    size = {t: -(-program.tensors[t].size // 4) * 4 for t in program.tensors}
    needs = []
    for i, step in enumerate(program.steps):
        src, dst = step.inputs[0], step.output
        if step.op == "reshape" or dst == program.output:
            continue
        assert plan.offsets[dst] + size[dst] <= plan.size
        if src == program.input:
            needs.append(size[dst])
        elif i in plan.in_place:
            assert plan.offsets[dst] == plan.offsets[src]
            needs.append(max(size[src], size[dst]))
        else:
            a, b = plan.offsets[src], plan.offsets[dst]
            assert a + size[src] <= b or b + size[dst] <= a, (i, a, b)
            needs.append(size[src] + size[dst])
    assert plan.size == max(needs) == 5 * 5 * 8  # the widest in-place step
    assert plan.plane_bytes == 7 * 7  # a 5x5 plane bordered with the 3x3 kernel's padding


@pytest.mark.slow
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_real_files_are_bit_exact_with_tflm_and_the_integer_model(runs, folders, tmp_path, bits):
    """A trained run at 2, 4 and 8 bits: the C engine, its numpy reference, TFLM and tinyq's integer
    model of the Keras QAT model give the same int8 outputs on every image."""
    from tinyq.aot.lower import lower
    from tinyq.integer import IntegerModel
    from tinyq.qat import load_model
    from tinyq.runtimes import tflm_outputs
    from tinyq.tflite import flatbuffer
    from tinyq.verify import contract_for, load_eval_data, model_input, run_of

    data, fb = flatbuffer.read(runs[bits] / "model.tflite")
    contract = contract_for(fb, run_of(runs[bits] / "model.tflite"))
    images = load_eval_data(folders / "labelled", contract, 40, lambda m: None)
    x = model_input(fb, images.x, contract)
    program = lower(data)
    tflm = tflm_outputs(data, x)
    assert np.array_equal(run(program, x), tflm)
    assert np.array_equal(_c_outputs(_compile(program, tmp_path), x, tflm.shape[1]), tflm)
    integer = IntegerModel(load_model(runs[bits] / "model.h5")).predict(contract.to_float(images.x))
    assert np.array_equal(np.asarray(integer, np.int8).reshape(tflm.shape), tflm)


@pytest.mark.slow
def test_export_aot_builds_and_matches_the_host_scores(runs, tmp_path):
    """``tinyq export RUN --target aot``: the example, built with the host's C compiler, prints OK
    (the sample's scores equal TFLM's); a model with an op the engine lacks is a one-line error."""
    from click.testing import CliRunner

    from tinyq.cli import main

    out = tmp_path / "aot"
    r = CliRunner().invoke(main, ["export", str(runs[2]), "--target", "aot", "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    assert "AOT engine:" in r.stderr and "static buffer" in r.stderr
    sources = sorted(str(p) for p in out.glob("*.c"))
    build = subprocess.run(["cc", "-O2", "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", f"-I{out}",
                            *sources, str(out / "example" / "main.c"), "-o", str(tmp_path / "example")],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    ran = subprocess.run([str(tmp_path / "example")], capture_output=True, text=True)
    assert ran.returncode == 0 and "OK: identical to TFLM" in ran.stdout, ran.stdout
    engine = next(p for p in out.glob("*.c") if p.name not in ("model_io.c", "sample_input.c"))
    assert "tensorflow" not in engine.read_text() and "malloc" not in engine.read_text()  # no TFLM, no heap


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


@pytest.mark.parametrize("pad", [0, 1])
def test_average_pool_in_c_computes_its_specification(tmp_path, pad):
    """AVERAGE_POOL_2D (as the MLPerf int8 file ends): the taps inside the image, rounded half away from zero."""
    rng = np.random.default_rng(7 + pad)
    t = {0: Tensor(0, (1, 7, 7, 5), 0.02, -3), 1: Tensor(1, (1, 4 if pad else 3, 4 if pad else 3, 5), 0.02, -3)}
    step = Step("avgpool", [0], 1, {"filter": (3, 3), "stride": (2, 2), "pad": (pad, pad), "act_min": -100,
                                    "act_max": 127})
    program = Program(t, [step], 0, 1)
    x = rng.integers(-128, 128, size=(16, 7, 7, 5)).astype(np.int8)
    expected = run(program, x)
    assert expected.min() >= -100 and len(np.unique(expected)) > 50
    assert np.array_equal(_c_outputs(_compile(program, tmp_path), x, expected.shape[1]), expected)


@pytest.mark.slow
def test_the_mlperf_int8_file_runs_in_the_aot_engine(tmp_path, vww_dev):
    """A file tinyq did not write (the MLPerf Tiny int8 reference, AVERAGE_POOL_2D included): C == TFLM."""
    from conftest import shared_path
    from tinyq.aot.lower import lower
    from tinyq.runtimes import tflm_outputs
    from tinyq.tflite import flatbuffer
    from tinyq.verify import contract_for, load_eval_data, model_input

    data, fb = flatbuffer.read(shared_path("models", "vww_96_int8.tflite"))
    contract = contract_for(fb, None)
    images = load_eval_data(vww_dev, contract, 16, lambda m: None)
    x = model_input(fb, images.x, contract)
    tflm = tflm_outputs(data, x)
    assert np.array_equal(_c_outputs(_compile(lower(data), tmp_path), x, tflm.shape[1]), tflm)


def test_a_graph_that_is_not_a_chain_is_planned_by_lifetimes(tmp_path):
    """Two steps read one tensor: no step in place, every depthwise still gets its channel plane,
    and the C engine computes what numpy does."""
    rng = np.random.default_rng(11)
    t = {0: Tensor(0, (1, 6, 6, 4), 0.02, -3), 1: Tensor(1, (1, 6, 6, 4), 0.05, -10),
         2: Tensor(2, (1, 6, 6, 4), 0.05, -10), 3: Tensor(3, (1, 6, 6, 8), 0.05, -10)}
    q, shift = quantize_multiplier(np.full(8, 0.004))

    def layer(op, w):
        c = w.shape[3] if op == "depthwise" else w.shape[0]
        extra = {"depth_multiplier": 1} if op == "depthwise" else {}
        return {"weights": w, "storage": "int8", "bias": rng.integers(-500, 500, c), "multiplier": q[:c].astype(np.int64),
                "shift": shift[:c].astype(np.int64), "act_min": -128, "act_max": 127, "stride": (1, 1),
                "dilation": (1, 1), "pad": (1, 1) if op == "depthwise" else (0, 0), **extra}

    steps = [Step("depthwise", [0], 1, layer("depthwise", rng.integers(-127, 128, (1, 3, 3, 4)).astype(np.int8))),
             Step("depthwise", [1], 2, layer("depthwise", rng.integers(-127, 128, (1, 3, 3, 4)).astype(np.int8))),
             Step("conv", [1], 3, layer("conv", rng.integers(-127, 128, (8, 1, 1, 4)).astype(np.int8)))]
    program = Program(t, steps, 0, 3)
    plan = plan_memory(program)
    assert not plan.in_place and plan.plane_bytes == 8 * 8  # 6x6, bordered
    x = rng.integers(-128, 128, size=(12, 6, 6, 4)).astype(np.int8)
    expected = run(program, x)
    assert len(np.unique(expected, axis=0)) == len(x)
    assert np.array_equal(_c_outputs(_compile(program, tmp_path), x, expected.shape[1]), expected)
