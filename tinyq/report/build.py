"""Gather one run's numbers: layers, grids, training curves, accuracy against size, confusion.

Every number a plot shows is in the dict :func:`build_report` returns (``report.json``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from tinyq.contract import InputContract
from tinyq.convert.converter import layer_of
from tinyq.errors import TinyqError
from tinyq.fit import evaluate_keras, read_history
from tinyq.logs import Log, captured_fd2, quiet
from tinyq.qat import diagnostics, load_model, quantized_layers
from tinyq.runfolder import Run
from tinyq.runtimes.guard import require_runnable
from tinyq.tflite import flatbuffer
from tinyq.tflite.breakdown import inspect_model
from tinyq.runtimes import require_int8_io
from tinyq.verify import confusion, contract_for, load_eval_data, tflm_predictions

HIST_BINS = 60
STORAGE_NAMES = {"INT8": "INT8", "INT4": "packed INT4", "LUT2": "2-bit LUT indices (TFLM DECODE)"}


def _layers(run: Run, info: dict) -> list[dict]:
    """One row per weight tensor of the file: its layer, bits, storage, channels, params, bytes."""
    rows = []
    for t in info["tensors"]:
        if t["kind"] != "weights":
            continue
        rows.append({"layer": layer_of(t["name"]) or t["name"], "bits": t["bits"], "storage": t["type"],
                     "per_channel": t["channels"] > 1, "channels": t["channels"], "params": t["params"],
                     "bytes": t["bytes"]})
    return rows


def _histograms(qat) -> list[dict]:
    """Per quantized layer: latent float weights in units of their channel's scale, and the grid.

    On that axis every channel's levels are the same numbers (``code + offset``), so one
    histogram per layer shows how the weights sit on the grid. Weights that are exactly zero
    (pruned or decayed away, as in the dead channels of pretrained MobileNets) are counted,
    not drawn: they would hide the live ones.
    """
    out = []  # a list, in model order: report.json sorts object keys
    for layer, weight, quantizer, qvars in quantized_layers(qat):
        w, scale = (t.numpy() for t in quantizer.latent(weight, qvars))
        zero = np.abs(w) < 1e-7
        units = (w / scale)[~zero]
        g = quantizer.grid
        top = g.top_level + 0.5
        counts, edges = np.histogram(np.clip(units, -1.5 * top, 1.5 * top), bins=HIST_BINS,
                                     range=(-1.5 * top, 1.5 * top))
        out.append({"layer": layer.layer.name, "bits": quantizer.bits, "levels": g.levels if g.bits <= 4 else None,
                                 "clip": top, "clipped_fraction": float(np.mean(np.abs(units) > top)) if units.size
                                 else 0.0, "zero_fraction": float(zero.mean()),
                                 "dead_channels": int(zero.reshape(-1, w.shape[-1]).all(axis=0).sum()),
                                 "edges": [round(float(e), 5) for e in edges], "counts": counts.tolist()})
    return out


def _float_tflite_bytes(run: Run) -> int:
    """Bytes of the float original as a float32 TFLite file: the honest size of 'no quantization'.

    Converted once (about 20 s) and kept in the run's metrics: every report of the run reads it.
    """
    from tinyq._tf import tf

    known = run.metrics().get("float_tflite_bytes")
    if known:
        return int(known)
    converter = tf.lite.TFLiteConverter.from_keras_model(load_model(run.float_model))
    with captured_fd2():
        size = len(converter.convert())
    run.update_metrics(float_tflite_bytes=size)
    return size


def _card(config: dict, layers: list[dict], float_ops: list[str], dropped: dict[str, int]) -> dict:
    settings = config["train"]
    bits = {r["bits"] for r in layers}
    return {
        "method": settings.get("method", "ste"),
        "ptq": settings.get("ptq"),
        "weight_bits": settings["bits"],
        "kept_8bit": settings.get("keep_8bit", []),
        "layers_at_8bit": [r["layer"] for r in layers if r["bits"] == 8],
        "weight_bits_in_file": sorted(bits),
        "per_channel": [r["layer"] for r in layers if r["per_channel"]],
        "per_tensor": [r["layer"] for r in layers if not r["per_channel"]],
        "activations": "int8, per tensor, asymmetric; ranges calibrated on training images, then learned "
                       "(moving averages) during QAT",
        "batch_norm": "folded into the preceding Conv2D / DepthwiseConv2D / Dense before QAT, so the trained "
                      "grid is the deployed one" if settings.get("ptq") != "converter"
                      else "folded by the TFLite converter",
        "float_layers": float_ops,
        "dead_channels_dropped": dropped,
        "distillation": None if settings.get("ptq") else (
            1.0 if settings.get("unlabeled") else settings.get("distill")),
        "distillation_features": None if settings.get("ptq") else settings.get("distill_features"),
    }


def _point(model: str, nbytes: int, acc: float, n: int, data: str, runtime: str, measure: str = "accuracy") -> dict:
    """``measure``: "accuracy" against labels, or "agreement" with the float model (labels were its answers)."""
    return {"model": model, "bytes": nbytes, "accuracy": acc, "n": n, "data": data, "runtime": runtime,
            "measure": measure}


def build_report(run_path: str | Path, data: str | Path | None = None, references: Sequence[str] = (),
                 limit: int | None = None, log: Log = quiet) -> dict:
    """The report of ``run_path``; with ``data``, every model is also measured on that folder."""
    run = Run(run_path).require()
    if not run.tflite.exists():
        raise TinyqError(f"{str(run.path)!r} has no model.tflite yet; finish the run with --resume, "
                         "or tinyq convert RUN")
    config, metrics = run.config(), run.metrics()
    contract = InputContract.from_dict(config["contract"])
    tflite = run.tflite.read_bytes()
    info = inspect_model(run.tflite)
    layers = _layers(run, info)
    float_bytes = _float_tflite_bytes(run) if run.float_model.exists() else None
    labels = list(contract.labels)
    qat = load_model(run.model) if run.model.exists() else None

    accuracy: list[dict] = []
    held_out = f"{metrics.get('data', '?')} (held-out test split)"
    measure = metrics.get("measure", "accuracy")
    if f"tflm_test_{measure}" in metrics:
        accuracy.append(_point("this run", len(tflite), metrics[f"tflm_test_{measure}"], metrics.get("test_n", 0),
                               held_out, "TFLM, int8", measure))
    if "float_test_accuracy" in metrics and float_bytes:
        accuracy.append(_point("float original", float_bytes, metrics["float_test_accuracy"],
                               metrics.get("keras_test_n", 0), held_out, "Keras, float32"))
    confusion = None
    if metrics.get("tflm_test_confusion"):
        confusion = {"labels": labels, "matrix": metrics["tflm_test_confusion"], "data": held_out,
                     "runtime": "TFLM, int8"}
    if data is not None:
        confusion = _measure(run, data, references, limit, contract, tflite, float_bytes, accuracy, log)

    return {
        "run": str(run.path), "kind": config.get("kind", "train"), "tinyq_version": config.get("tinyq_version"),
        "settings": config["train"], "contract": config["contract"],
        "card": _card(config, layers, flatbuffer.parse(tflite).float_ops(), metrics.get("dropped_channels", {})),
        "file": {"bytes": len(tflite), "breakdown": info["breakdown"], "weight_params": info["weight_params"],
                 "packed_weight_bytes": info["packed_weight_bytes"],
                 "file_over_packed_weights": info["file_over_packed_weights"]},
        "metrics": metrics, "history": read_history(run.history_path), "layers": layers,
        "histograms": _histograms(qat) if qat is not None else [],
        "diagnostics": diagnostics(qat) if qat is not None else {},
        "accuracy_vs_size": accuracy, "confusion": confusion,
    }


def _measure(run: Run, data, references, limit, contract, tflite: bytes, float_bytes, accuracy, log) -> dict:
    """Measure this run (TFLM), its float original (Keras) and each reference file (TFLM) on ``data``."""
    images = load_eval_data(data, contract, limit, log)
    if len(images) == 0:
        raise TinyqError(f"no readable images in {str(data)!r}; give a folder with person/ and non_person/")
    name = str(data)
    require_runnable(tflite, repr(str(run.tflite)))
    log(f"report: this run in TFLM on {len(images)} images of {name} ...")
    pred = tflm_predictions(tflite, images, contract)
    accuracy.append(_point("this run", len(tflite), float((pred == images.y).mean()), len(images), name,
                           "TFLM, int8"))
    if run.float_model.exists():
        log("report: float original in Keras ...")
        fpred = evaluate_keras(load_model(run.float_model), images, contract).argmax(1)
        accuracy.append(_point("float original", float_bytes, float((fpred == images.y).mean()), len(images), name,
                               "Keras, float32"))
    for ref in references:
        path = Path(ref)
        if not path.is_file():
            raise TinyqError(f"--reference {ref!r} does not exist; give a .tflite file")
        log(f"report: {path.name} in TFLM ...")
        rdata, rfb = flatbuffer.read(path)
        require_int8_io(rfb, path, "a --reference must be a full-integer model (int8 in and out)")
        reference = contract_for(rfb, None)
        if reference.shape != contract.shape or len(reference.labels) != len(contract.labels):
            raise TinyqError(f"--reference {ref!r} takes {reference.shape} and gives {rfb.tensors[rfb.outputs[0]].shape}; "
                             f"this run's model takes {contract.shape} and gives {len(contract.labels)} scores: compare "
                             "models of the same task")
        require_runnable(rdata, repr(str(path)))
        rpred = tflm_predictions(rdata, images, contract)
        accuracy.append(_point(path.name, len(rdata), float((rpred == images.y).mean()), len(images), name,
                               "TFLM, int8"))
    return {"labels": list(contract.labels), "matrix": confusion(images.y, pred, len(contract.labels)),
            "data": name, "runtime": "TFLM, int8"}
