"""`tinyq report RUN`: report.json holds every number the plots and report.md show."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tinyq.cli import main
from tinyq.report.plots import FIGURES

pytestmark = pytest.mark.slow  # quantizes models and draws reports


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module", params=["qat", "ptq-converter"])
def run(request, float_model, folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / request.param
    flags = ["--epochs", 2] if request.param == "qat" else ["--ptq", "converter", "--bits", 8]
    bits = [] if request.param != "qat" else ["--bits", 2]
    r = invoke("quantize", float_model, *bits, *flags, "--data", folders / "labelled", "--batch", 16, "--out", out)
    assert r.exit_code == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def reference(float_model, folders, tmp_path_factory):
    """Another model's file, standing in for the MLPerf int8 reference."""
    out = tmp_path_factory.mktemp("ref") / "ref"
    assert invoke("quantize", float_model, "--ptq", "tinyq", "--bits", 4, "--data", folders / "labelled",
                  "--out", out).exit_code == 0
    return out / "model.tflite"


def test_report_files_and_numbers(run, folders, reference):
    r = invoke("report", run, "--data", folders / "labelled", "--reference", reference)
    assert r.exit_code == 0, r.stderr
    report = json.loads((run / "report.json").read_text())
    check = json.loads(invoke("check", run, "--data", folders / "labelled", "--json").stdout)
    on_data = {p["model"]: p for p in report["accuracy_vs_size"] if p["data"] == str(folders / "labelled")}
    assert set(on_data) == {"this run", "float original", "model.tflite"}
    assert on_data["this run"]["accuracy"] == check["tflm"]["accuracy"]
    assert on_data["this run"]["bytes"] == (run / "model.tflite").stat().st_size
    assert on_data["model.tflite"]["bytes"] == reference.stat().st_size
    assert on_data["float original"]["bytes"] > 0  # a float32 .tflite of the original
    # converted once per run, then read from the metrics by every report
    assert json.loads((run / "metrics.json").read_text())["float_tflite_bytes"] == on_data["float original"]["bytes"]
    matrix = np.array(report["confusion"]["matrix"])
    assert matrix.sum() == 120 and np.trace(matrix) / 120 == pytest.approx(check["tflm"]["accuracy"])
    assert sum(row["bytes"] for row in report["layers"]) == report["file"]["breakdown"]["weights"]
    md = (run / "report.md").read_text()
    assert "## Quantization card" in md and f"{100 * check['tflm']['accuracy']:.1f}%" in md
    for name, rel in report["plots"].items():
        data = (run / rel).read_bytes()
        assert data.startswith(PNG_MAGIC)
        Image.open(run / rel).verify()
    qat = report["settings"].get("ptq") is None
    assert set(report["plots"]) == ({"curves", "weights", "bits", "accuracy_size", "confusion"} if qat
                                    else {"bits", "accuracy_size", "confusion"})


def test_plots_are_drawn_from_report_json_alone(run, folders):
    """Redrawing every figure from the JSON file gives the same PNG: no number hides outside it."""
    assert invoke("report", run).exit_code == 0
    report = json.loads((run / "report.json").read_text())
    for name, rel in report["plots"].items():
        assert FIGURES[name](report) == (run / rel).read_bytes(), name


def test_weight_histograms_count_the_quantized_weights(run):
    from tinyq.qat import load_model, quantized_layers

    assert invoke("report", run).exit_code == 0
    report = json.loads((run / "report.json").read_text())
    if report["settings"].get("ptq") == "converter":
        assert report["histograms"] == []
        return
    layers = {layer.layer.name: weight.numpy() for layer, weight, _, _ in quantized_layers(load_model(run / "model.h5"))}
    assert [h["layer"] for h in report["histograms"]] == list(layers)  # model order
    for h in report["histograms"]:
        name = h["layer"]
        nonzero = int((np.abs(layers[name]) >= 1e-7).sum())
        assert sum(h["counts"]) == nonzero
        assert h["zero_fraction"] == pytest.approx(1 - nonzero / layers[name].size)
        assert (h["levels"] is None) == (h["bits"] > 4)


def test_report_needs_a_finished_run(tmp_path):
    r = invoke("report", tmp_path / "nothing")
    assert r.exit_code == 1 and "does not exist" in r.stderr


@pytest.mark.parametrize("foreign", ["float", "another input size", "ten classes"])
def test_a_foreign_reference_is_one_line_error(run, folders, tmp_path, foreign):
    """A reference of another task was a traceback (issue 30)."""
    from tinyq._tf import keras, tf

    size, classes = {"float": (32, 2), "another input size": (48, 2), "ten classes": (32, 10)}[foreign]
    i = keras.Input((size, size, 3))
    model = keras.Model(i, keras.layers.Dense(classes, activation="softmax")(keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(4, 3)(i))))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if foreign != "float":
        x = np.random.default_rng(0).uniform(0, 1, (8, size, size, 3)).astype(np.float32)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([v[None]] for v in x)
        converter.inference_input_type = converter.inference_output_type = tf.int8
    path = tmp_path / "ref.tflite"
    path.write_bytes(converter.convert())
    r = CliRunner().invoke(main, ["report", str(run), "--data", str(folders / "labelled"), "--reference", str(path)])
    last = r.stderr.strip().splitlines()[-1]
    assert r.exit_code == 1 and last.startswith("error: ") and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert {"float": "full-integer", "another input size": "same task", "ten classes": "not one score per label"}[
        foreign] in last, last
