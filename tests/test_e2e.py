"""End to end through the CLI: train -> convert -> export -> check -> inspect at 2, 4 and 8 bits.

Real TensorFlow training (small: 300 synthetic images, 1 + 1 epochs), the real converter, the
real LiteRT and TFLM interpreters, real compilers.
"""
import json

import pytest
from click.testing import CliRunner

from tinyq.cli import main
from tinyq.tflite import flatbuffer


pytestmark = pytest.mark.slow  # trains person-detect three times (the runs fixture)


BITS = (2, 4, 8)


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="session")
def synthetic_eval(tmp_path_factory):
    """A held-out synthetic folder (another seed) in the VWW layout, for `check`."""
    from PIL import Image

    from tinyq.data import synthetic

    root = tmp_path_factory.mktemp("eval")
    data = synthetic(40, seed=777)
    for i, (x, y) in enumerate(zip(data.x, data.y)):
        folder = root / ("person" if y else "non_person")
        folder.mkdir(exist_ok=True)
        Image.fromarray(x).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("bits", BITS)
def test_run_folder_contents(runs, bits):
    run = runs[bits]
    for name in ("config.json", "float.h5", "model.h5", "history.json", "metrics.json", "model.tflite",
                 "representative.npy", "report.md", "report.json", "plots/curves.png", "plots/weights.png"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["tflm_test_accuracy"] <= 1.0 and metrics["test_n"] == 30
    assert 0.0 <= metrics["float_test_accuracy"] <= 1.0
    # convert ran the file in TFLM against the Keras model's integer arithmetic: equal to the bit
    assert metrics["integer_check"] == {"images": 32, "identical_outputs": 1.0, "agreement_with_tflm": 1.0,
                                        "max_abs_diff": 0}
    assert "in integer arithmetic (TFLM, 32 calibration images): int8 outputs identical on 32\n" in (
        run / "report.md").read_text()
    report = json.loads((run / "report.json").read_text())
    assert report["kind"] == "train" and set(report["history"]) == {"float", "qat"}
    assert {h["bits"] for h in report["histograms"]} == ({8} if bits == 8 else {8, bits})
    config = json.loads((run / "config.json").read_text())
    assert config["plan"]["pw1"]["weight_bits"] == bits and config["plan"]["conv1"]["weight_bits"] == 8
    history = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in history["float"]] == [1] and [e["epoch"] for e in history["qat"]] == [1]
    assert {"loss", "accuracy", "val_accuracy", "seconds"} <= set(history["qat"][0])
    assert not list(run.glob(".*.tmp*")) and not list(run.glob(".backup*"))


@pytest.mark.parametrize("bits", BITS)
def test_check_json(runs, synthetic_eval, bits):
    r = invoke("check", runs[bits] / "model.tflite", "--data", synthetic_eval, "--json")
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)  # stdout holds the JSON object and nothing else
    tflm = result["tflm"]
    assert tflm["n"] == 40 and 0 <= tflm["accuracy"] <= 1 and tflm["arena_bytes"] > 10_000
    assert tflm["agreement_with_keras"] >= 0.9
    # the Keras model in integer arithmetic predicts TFLM's int8 outputs exactly
    assert result["keras_integer"]["identical_outputs"] == 1.0 and result["keras_integer"]["max_abs_diff"] == 0
    assert result["keras_integer"]["agreement_with_tflm"] == 1.0
    assert result["file_bytes"] == (runs[bits] / "model.tflite").stat().st_size
    if bits == 2:
        assert "DECODE" in result["litert"]["skipped"]
    else:  # LiteRT without XNNPACK and TFLM agree bit for bit on int8 and int4
        assert result["litert"]["n"] == 40
        assert result["litert_vs_tflm_max_abs_diff"] == 0


def test_sizes_shrink_with_bits(runs):
    sizes = {b: (runs[b] / "model.tflite").stat().st_size for b in BITS}
    assert sizes[2] < sizes[4] < sizes[8], sizes


@pytest.mark.parametrize("bits", BITS)
def test_weight_storage_by_bits(runs, bits):
    _, fb = flatbuffer.read(runs[bits] / "model.tflite")
    config = json.loads((runs[bits] / "config.json").read_text())
    by_layer = {}
    from tinyq.convert.converter import layer_of

    producers = {t: op for op in fb.ops for t in op.outputs}
    for op in fb.ops:
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            src = producers.get(op.inputs[1])
            t = fb.tensors[src.inputs[0] if src is not None else op.inputs[1]]
            by_layer[layer_of(fb.tensors[op.inputs[1]].name) or layer_of(t.name)] = (t.type, src is not None)
    for layer, spec in config["plan"].items():
        expected = {8: ("INT8", False), 4: ("INT4", False), 2: ("UINT8", True)}[spec["weight_bits"]]
        assert by_layer[layer] == expected, layer


def test_convert_widens_storage_losslessly(runs, tmp_path):
    out = tmp_path / "w4-as-int8.tflite"
    r = invoke("convert", runs[4], "--bits", 8, "--out", out)
    assert r.exit_code == 0, r.stderr
    assert "integer arithmetic on 32 images, bit for bit" in r.stderr  # the 4-bit grid spread in INT8
    _, fb = flatbuffer.read(out)
    assert {fb.tensors[t].type for t in fb.weight_tensors()} == {"INT8"}
    from tinyq.convert.converter import storage_of
    from tinyq.qat import load_model

    assert storage_of(load_model(runs[4] / "model.h5"), fb) == 8
    assert out.stat().st_size > (runs[4] / "model.tflite").stat().st_size
    r = invoke("convert", runs[4], "--bits", 2, "--out", tmp_path / "x.tflite")
    assert r.exit_code == 1 and "below the 4 bits" in r.stderr and not (tmp_path / "x.tflite").exists()


@pytest.mark.parametrize("storage, weight_types", [(4, {"INT4", "INT8"}), (8, {"INT8"})])
def test_convert_2bit_run_for_runtimes_without_decode(runs, tmp_path, synthetic_eval, storage, weight_types):
    """--bits 4 / 8 on a 2-bit run: plain INT4 / INT8 tensors and no DECODE, so LiteRT runs it
    too. The same real weights, but not the same integers: the LUT file spreads the 2-bit grid
    to -126, -42, 42, 126 (steps s / 84), INT4 holds -6, -2, 2, 6 (s / 2), so the requantization
    multipliers and int32 biases differ and TFLM's outputs may differ from the LUT file's by a
    step. Each file computes exactly what the Keras model computes in its own integers."""
    import numpy as np

    from tinyq.runtimes import tflm_outputs
    from tinyq.convert.converter import storage_of
    from tinyq.integer import IntegerModel
    from tinyq.qat import load_model, with_storage

    out = tmp_path / f"w2-as-{storage}.tflite"
    r = invoke("convert", runs[2], "--bits", storage, "--out", out)
    assert r.exit_code == 0, r.stderr
    assert "integer arithmetic on 32 images, bit for bit" in r.stderr
    data, fb = flatbuffer.read(out)
    assert {fb.tensors[t].type for t in fb.weight_tensors()} == weight_types
    assert not set(flatbuffer.DECODE_OPS) & set(fb.op_names)
    result = json.loads(invoke("check", out, "--data", synthetic_eval, "--json").stdout)
    assert result["litert"]["n"] == 40 and result["litert_vs_tflm_max_abs_diff"] == 0

    qat = load_model(runs[2] / "model.h5")
    assert storage_of(qat, fb) == {4: 4, 8: None}[storage]  # 2-bit in INT8: the LUT file's integers
    assert storage_of(qat, flatbuffer.read(runs[2] / "model.tflite")[1]) is None
    x = np.random.default_rng(0).integers(-128, 128, (8, 96, 96, 3), dtype=np.int8)
    for path, bits in ((out, storage), (runs[2] / "model.tflite", None)):
        model = IntegerModel(with_storage(qat, bits))
        scale, zero_point, _ = model.input_range
        expected = model((x.astype(np.float64) - zero_point) * scale)
        np.testing.assert_array_equal(tflm_outputs(path.read_bytes(), x), expected)
    assert np.abs(tflm_outputs(data, x).astype(int) - tflm_outputs((runs[2] / "model.tflite").read_bytes(), x)).max() <= 1


def test_convert_warns_when_the_file_is_not_what_was_trained(runs):
    """The integer check can fail: the 2-bit run's Keras model against the 4-bit run's file."""
    import numpy as np

    from tinyq.contract import InputContract
    from tinyq.verify import against_integer_model
    from tinyq.qat import load_model

    config = json.loads((runs[2] / "config.json").read_text())
    logged = []
    result = against_integer_model(load_model(runs[2] / "model.h5"), (runs[4] / "model.tflite").read_bytes(),
                                   np.load(runs[2] / "representative.npy"),
                                   InputContract.from_dict(config["contract"]), log=logged.append)
    assert result["identical_outputs"] < 1.0 and result["max_abs_diff"] > 0
    assert any(m.startswith("warning: TFLM's int8 outputs differ") for m in logged), logged


@pytest.mark.parametrize("bits", BITS)
def test_inspect(runs, bits):
    r = invoke("inspect", runs[bits] / "model.tflite", "--json")
    assert r.exit_code == 0
    info = json.loads(r.stdout)
    assert sum(info["breakdown"].values()) == info["file_bytes"]
    types = {t["type"] for t in info["tensors"] if t["kind"] == "weights"}
    assert types == {2: {"LUT2", "INT8"}, 4: {"INT4", "INT8"}, 8: {"INT8"}}[bits]
    assert (info["breakdown"]["value_tables"] > 0) == (bits == 2)
    text = invoke("inspect", runs[bits] / "model.tflite").stdout
    assert "breakdown:" in text and "file / packed weights" in text


def test_check_on_real_images(runs, people96):
    r = invoke("check", runs[8] / "model.tflite", "--data", people96 / "test", "--limit", 24, "--json")
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["tflm"]["n"] == 24 and result["litert_vs_tflm_max_abs_diff"] == 0
    assert result["keras_integer"]["identical_outputs"] == 1.0


# --seed's reproducibility, two processes giving the same bytes: tests/test_resume.py compares a resumed
# run's file with an uninterrupted one's, byte for byte


def test_grayscale_channels(tmp_path, synthetic_eval):
    out = tmp_path / "grey"
    r = invoke("train", "person-detect", "--from-scratch", "--bits", 8, "--channels", 1, "--epochs", 1, "--qat-epochs", 1,
               "--synthetic-images", 100, "--batch", 32, "--out", out)
    assert r.exit_code == 0, r.stderr
    _, fb = flatbuffer.read(out / "model.tflite")
    assert fb.tensors[fb.inputs[0]].shape == (1, 96, 96, 1)
    result = json.loads(invoke("check", out, "--data", synthetic_eval, "--json").stdout)
    assert result["tflm"]["n"] == 40 and result["litert_vs_tflm_max_abs_diff"] == 0
    settings_dir = tmp_path / "fw"
    assert invoke("export", out, "--out", settings_dir).exit_code == 0
    assert "#define PERSON_DETECT_INPUT_CHANNELS 1" in (settings_dir / "model_settings.h").read_text()
