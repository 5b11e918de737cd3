"""Run a flatbuffer in LiteRT (reference kernels) and TFLM on a data folder: accuracy, agreement, arena."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np

from tinyq._stderr import captured_fd2
from tinyq.contract import InputContract
from tinyq.convert import flatbuffer
from tinyq.data import ImageSet, layout, load_folder
from tinyq.errors import TinyqError
from tinyq.guard import require_runnable
from tinyq.runfolder import Run

Log = Callable[[str], None]
LITERT_OPS_MISSING = set(flatbuffer.DECODE_OPS)


def contract_for(fb: flatbuffer.Flatbuffer, run: Run | None) -> InputContract:
    """The run's contract, or one read off the model's input (RGB/grey, [0, 1], VWW labels); either
    way the model must give one output per label."""
    if run is not None:
        contract = InputContract.from_dict(run.config()["contract"])
    else:
        shape = fb.tensors[fb.inputs[0]].shape
        if len(shape) != 4 or shape[1] != shape[2]:
            raise TinyqError(f"model input shape {shape} is not a square image; tinyq checks image classifiers")
        contract = InputContract(resolution=shape[1], channels=shape[3])
    out = fb.tensors[fb.outputs[0]].shape
    if not out or int(np.prod(out)) != out[-1] or out[-1] != len(contract.labels):
        # TFLM takes a declared output shape on trust (a damaged 2-bit file declared 82 outputs behind a
        # 2-wide FULLY_CONNECTED, and TFLM returned 80 values from past its end)
        raise TinyqError(f"the model's output has shape {out}, not one score per label ({', '.join(contract.labels)}): "
                         "tinyq checks and exports only such classifiers; a tinyq file like this is damaged "
                         "(convert it again)")
    return contract


def run_of(tflite: Path) -> Run | None:
    run = Run(tflite.parent)
    return run if run.config_path.exists() else None


def load_eval_data(data_dir: str | Path, contract: InputContract, limit: int | None, log: Log) -> ImageSet:
    found = layout(data_dir)
    if "all" in found:
        folder = found["all"]
    else:
        name = "test" if "test" in found else sorted(found)[-1]
        folder = found[name]
        log(f"check: {data_dir} has split folders; using {name}/")
    data = load_folder(folder, contract.resolution, contract.channels, limit)
    if data.skipped:
        log(f"check: {data.skipped_note()}")
    return data


def quantize_input(pixels: np.ndarray, contract: InputContract, scale: float, zero_point: int) -> np.ndarray:
    return np.clip(np.round(contract.to_float(pixels) / scale + zero_point), -128, 127).astype(np.int8)


def model_input(fb: flatbuffer.Flatbuffer, pixels: np.ndarray, contract: InputContract) -> np.ndarray:
    """``pixels`` (uint8) as the int8 input of the file ``fb``, by its input quantization."""
    return quantize_input(pixels, contract, *fb.tensors[fb.inputs[0]].affine)


def require_int8_io(fb: flatbuffer.Flatbuffer, tflite, needs: str) -> None:
    """A one-line error unless ``fb`` takes int8 in and gives int8 out (``needs`` ends the message)."""
    tin, tout = fb.tensors[fb.inputs[0]], fb.tensors[fb.outputs[0]]
    if tin.type != "INT8" or tout.type != "INT8":
        raise TinyqError(f"{str(tflite)!r} has {tin.type} input / {tout.type} output; {needs}")


def _litert_interpreter(data: bytes):
    """A LiteRT interpreter on reference kernels; ``(interpreter, "reference" | "builtin")``.

    Reference kernels, no delegate: XNNPACK's requantisation rounds differently from TFLM's,
    and so, rarely, does the optimized builtin FULLY_CONNECTED (off by 1 on 2 of 477 vww-dev
    images with vww_96.h5 at 8 bits). The reference kernels match TFLM on every op but
    FULLY_CONNECTED, which requantizes with one rounding where TFLM rounds twice: near ties
    part by 1-2 output steps (2 of 477 vww-dev images in one file; benchmarks/litert_fc.py). The
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
    for xi in x:
        it.set_input(xi[None], 0)
        it.invoke()
        outs.append(np.array(it.get_output(0))[0])
    return np.stack(outs)


def tflm_predictions(data: bytes, images: ImageSet, contract: InputContract) -> np.ndarray:
    """Top-1 class of the flatbuffer ``data`` in TFLM for each of ``images``."""
    fb = flatbuffer.parse(data)
    return tflm_outputs(data, model_input(fb, images.x, contract)).argmax(1)


def confusion(truth: np.ndarray, pred: np.ndarray, classes: int) -> list[list[int]]:
    """``matrix[true][predicted]`` counts."""
    m = np.zeros((classes, classes), np.int64)
    np.add.at(m, (np.asarray(truth, np.int64), np.asarray(pred, np.int64)), 1)
    return m.tolist()


def against_keras(keras_prob: np.ndarray, pred: np.ndarray) -> dict:
    """Top-1 agreement with the Keras model, how many decisions differ, and how close to a tie Keras
    was on them: ``keras_margin_max``, the largest gap between its two highest probabilities there
    (a file that computes the trained integers flips only images Keras itself nearly tied)."""
    differ = keras_prob.argmax(1) != pred
    gaps = np.diff(np.sort(keras_prob[differ], axis=1)[:, -2:], axis=1)
    return {"agreement_with_keras": float(1.0 - differ.mean()), "disagreements": int(differ.sum()),
            "keras_margin_max": float(gaps.max(initial=0.0))}


def keras_integer(qat, fb: flatbuffer.Flatbuffer, images: ImageSet, contract: InputContract
                  ) -> tuple[np.ndarray | None, dict]:
    """The Keras model in the int8 kernels' arithmetic (:mod:`tinyq.integer`), with the integers
    ``fb`` stores (a 2-bit run converted with ``--bits 4`` holds other ones): its int8 outputs
    and accuracy, or None and why it was skipped."""
    from tinyq.convert.converter import storage, storage_of
    from tinyq.integer import IntegerModel, NotEmulated

    try:
        with storage(qat, storage_of(qat, fb)):
            out = IntegerModel(qat).predict(contract.to_float(images.x))
    except NotEmulated as e:
        return None, {"skipped": f"no integer version of this model: {e}"}
    except Exception as e:  # a side measurement: a gap in tinyq.integer must not cost the user the check
        return None, {"skipped": f"the integer version failed ({type(e).__name__}: {e}); please report it"}
    return out, {"accuracy": float((out.argmax(1) == images.y).mean()), "n": len(images)}


def against_integer(integer_out: np.ndarray, tflm_out: np.ndarray) -> dict:
    """How much of TFLM's output the integer Keras model predicts: top-1 agreement, and the share of
    images whose int8 outputs are identical (1.0 for a file that holds what was trained)."""
    return {"agreement_with_tflm": float((integer_out.argmax(1) == tflm_out.argmax(1)).mean()),
            "identical_outputs": float((integer_out == tflm_out).all(axis=1).mean()),
            "max_abs_diff": int(np.abs(integer_out - tflm_out.astype(np.int64)).max())}


def check(tflite: str | Path, data_dir: str | Path, limit: int | None = None, log: Log = lambda m: None) -> dict:
    """Accuracy in each runtime, agreement with the Keras model, LiteRT-vs-TFLM difference, arena."""
    tflite = flatbuffer.resolve(tflite)
    data, fb = flatbuffer.read(tflite)
    run = run_of(tflite)
    contract = contract_for(fb, run)
    images = load_eval_data(data_dir, contract, limit, log)
    require_int8_io(fb, tflite, "tinyq checks full-integer (int8 in, int8 out) models")
    require_runnable(data, repr(str(tflite)))
    x = model_input(fb, images.x, contract)
    result: dict = {"file": str(tflite), "file_bytes": len(data), "n": len(images), "data": str(data_dir),
                    "labels": list(contract.labels), "ops": fb.op_names}

    keras_prob = integer_out = None
    if run is not None and run.model.exists():
        from tinyq.qat import load_model
        from tinyq.train import evaluate_keras

        log("check: Keras QAT model ...")
        qat = load_model(run.model)
        keras_prob = evaluate_keras(qat, images, contract)
        result["keras"] = {"accuracy": float((keras_prob.argmax(1) == images.y).mean()), "n": len(images)}
        integer_out, result["keras_integer"] = keras_integer(qat, fb, images, contract)

    outputs = {}
    missing = LITERT_OPS_MISSING & set(fb.op_names)
    if missing:
        result["litert"] = {"skipped": "LiteRT has no DECODE operator: this 2-bit LUT file runs in TFLM only"}
    else:
        log("check: LiteRT (no XNNPACK) ...")
        outputs["litert"], litert_kernels = litert_outputs(data, x)
    log(f"check: TFLM on {len(images)} images ...")
    outputs["tflm"] = tflm_outputs(data, x)
    for name, out in outputs.items():
        pred = out.argmax(1)
        entry = {"accuracy": float((pred == images.y).mean()), "n": len(images)}
        if keras_prob is not None:
            entry.update(against_keras(keras_prob, pred))
        result[name] = entry
    if integer_out is not None:
        result["keras_integer"].update(against_integer(integer_out, outputs["tflm"]))
    if "litert" in outputs:
        result["litert"]["kernels"] = litert_kernels
    result["tflm"]["arena_bytes"] = arena_bytes(data)
    if "litert" in outputs:
        result["litert_vs_tflm_max_abs_diff"] = int(np.abs(outputs["litert"].astype(np.int32)
                                                           - outputs["tflm"].astype(np.int32)).max())
    return result
