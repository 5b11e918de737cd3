"""What a file computes against what was trained: accuracy in LiteRT (reference kernels) and TFLM on a
data folder, agreement with the Keras model and with its integer arithmetic (:mod:`tinyq.integer`), arena."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tinyq.contract import InputContract
from tinyq.convert.converter import storage_of
from tinyq.data import ImageSet, layout, load_folder
from tinyq.data.shards import is_shards, shard_sets
from tinyq.errors import TinyqError
from tinyq.fit import evaluate_keras
from tinyq.integer import IntegerModel, NotEmulated
from tinyq.logs import Log, quiet
from tinyq.qat import load_model, with_storage
from tinyq.runfolder import Run
from tinyq.runtimes import (LITERT_OPS_MISSING, arena_bytes, litert_outputs, model_input, require_int8_io,
                            tflm_outputs)
from tinyq.runtimes.guard import require_runnable
from tinyq.tflite import flatbuffer


def contract_for(fb: flatbuffer.Flatbuffer, run: Run | None) -> InputContract:
    """The run's contract, or one read off the model's input (RGB/grey, [0, 1], VWW labels); either
    way the model must take one image it declares as the contract's and give one output per label."""
    if len(fb.inputs) != 1 or len(fb.outputs) != 1:
        raise TinyqError(f"the model has {len(fb.inputs)} inputs and {len(fb.outputs)} outputs; tinyq checks and "
                         "exports image classifiers with one input and one output")
    shape = fb.tensors[fb.inputs[0]].shape
    if len(shape) != 4 or shape[0] != 1 or shape[1] != shape[2]:
        raise TinyqError(f"model input shape {shape} is not one square image; tinyq checks image classifiers")
    if run is not None:
        contract = InputContract.from_dict(run.config()["contract"])
        if tuple(shape[1:]) != contract.shape:
            raise TinyqError(f"the model's input {tuple(shape[1:])} differs from its run's contract {contract.shape}; "
                             "the file is not this run's: convert it again")
    else:
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
    if is_shards(data_dir):  # a pack: its test split (else the last there is), read whole
        sets = shard_sets(data_dir, contract.resolution, contract.channels, limit)
        if not sets:
            raise TinyqError(f"the pack {str(data_dir)!r} holds no images; pack again")
        name = "test" if "test" in sets else sorted(sets)[-1]
        log(f"check: {data_dir} is a pack; using its {name} split")
        return sets[name].load()
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
    try:
        out = IntegerModel(with_storage(qat, storage_of(qat, fb))).predict(contract.to_float(images.x))
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


def check(tflite: str | Path, data_dir: str | Path, limit: int | None = None, log: Log = quiet) -> dict:
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
    if run is not None and run.float_model.exists():  # the float original, for scale
        log("check: float model ...")
        fprob = evaluate_keras(load_model(run.float_model), images, contract)
        result["float"] = {"accuracy": float((fprob.argmax(1) == images.y).mean()), "n": len(images)}
    if run is not None and run.model.exists():
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


def against_integer_model(qat, data: bytes, pixels: np.ndarray, contract: InputContract,
                          storage_bits: int | None = None, log: Log = quiet,
                          n: int = 32) -> dict:
    """TFLM's int8 outputs of ``data`` against the QAT model's in integer arithmetic
    (:mod:`tinyq.integer`) on the first ``n`` of ``pixels``: equal on every image for a file
    that computes what was trained.

    Returns ``{images, identical_outputs, agreement_with_tflm, max_abs_diff}``, or ``{skipped}``
    for a model the integer version does not cover (the conversion itself stands).
    """
    try:  # the integers as this file stores them
        expected = IntegerModel(with_storage(qat, storage_bits)).predict(contract.to_float(pixels[:n]))
    except NotEmulated as e:
        log(f"convert: outputs not checked against the Keras model's integer arithmetic ({e})")
        return {"skipped": str(e)}
    except Exception as e:  # an advisory check: a gap in tinyq.integer must not cost the user the file
        log(f"warning: the Keras model's integer arithmetic could not be computed ({type(e).__name__}: {e}); "
            "outputs not checked, please report it")
        return {"skipped": f"{type(e).__name__}: {e}"}
    got = tflm_outputs(data, model_input(flatbuffer.parse(data), pixels[:n], contract))
    result = {"images": len(expected), **against_integer(expected, got)}
    differ = round((1 - result["identical_outputs"]) * len(expected))
    if not differ:
        log(f"convert: TFLM's int8 outputs equal the Keras model's integer arithmetic on {len(expected)} images, "
            "bit for bit")
    else:
        log(f"warning: TFLM's int8 outputs differ from the Keras model's integer arithmetic on {differ} of "
            f"{len(expected)} images (up to {result['max_abs_diff']} steps): the file does not compute exactly "
            "what was trained; please report it with the run folder")
    return result
