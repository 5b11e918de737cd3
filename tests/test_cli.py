"""The CLI: help everywhere, listings, and one-line errors with no partial output."""
import pytest
from click.testing import CliRunner

from tinyq.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.output + result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


@pytest.mark.parametrize("command", ["train", "quantize", "convert", "export", "check", "inspect", "report", "models",
                                     "methods"])
def test_help(command):
    r = invoke(command, "--help")
    assert r.exit_code == 0 and "Usage:" in r.output


def test_models_and_methods():
    assert "person-detect" in invoke("models").output
    from tinyq.quantizers import registry

    lines = invoke("methods").output.splitlines()
    assert [line.split()[0] for line in lines] == registry.names()
    assert all(registry.get(line.split()[0]).kind == line.split()[1] for line in lines)


def test_unknown_recipe():
    assert_one_line_error(invoke("train", "cat-detect"), "expected one of person-detect", "got 'cat-detect'")


@pytest.mark.parametrize("bits", [1, 9])
def test_unsupported_bits(bits, tmp_path):
    r = invoke("train", "person-detect", "--bits", bits, "--out", tmp_path / "run")
    assert_one_line_error(r, f"unsupported weight bits {bits}")
    assert not (tmp_path / "run").exists()


def test_unknown_method(tmp_path):
    assert_one_line_error(invoke("train", "person-detect", "--method", "magic", "--out", tmp_path / "r"),
                          "expected one of", "got 'magic'")


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "one_class"])
def test_bad_data_folder(case, tmp_path):
    data = tmp_path / "data"
    if case != "missing":
        data.mkdir()
    if case == "corrupt":
        for label in ("person", "non_person"):
            (data / label).mkdir()
            (data / label / "broken.jpg").write_bytes(b"\xff\xd8\xff\x00 not really a jpeg")
    if case == "one_class":
        from PIL import Image

        (data / "person").mkdir()
        for i in range(3):
            Image.new("RGB", (20, 20), (i, 2 * i, 3 * i)).save(data / "person" / f"{i}.png")
    r = invoke("train", "person-detect", "--data", data, "--out", tmp_path / "run")
    assert_one_line_error(r, str(data))
    assert not (tmp_path / "run").exists()


def test_usage_error_is_one_line():
    assert_one_line_error(invoke("check"), "Missing argument")


@pytest.fixture
def truncated(tmp_path):
    from tinyq.export.sources import templates_dir  # noqa: F401  (installed layout check)
    from tflite_micro.python.tflite_micro import runtime

    import pathlib

    good = (pathlib.Path(runtime.__file__).parent / "sine_float.tflite").read_bytes()
    path = tmp_path / "cut.tflite"
    path.write_bytes(good[: len(good) // 2])
    return path


def test_truncated_tflite(truncated, tmp_path):
    data = tmp_path / "d"
    assert_one_line_error(invoke("inspect", truncated), "not a valid .tflite")
    assert_one_line_error(invoke("check", truncated, "--data", data), "not a valid .tflite")
    r = invoke("export", truncated, "--out", tmp_path / "fw")
    assert_one_line_error(r, "not a valid .tflite")
    assert not (tmp_path / "fw").exists()


def test_not_a_run_folder(tmp_path):
    assert_one_line_error(invoke("convert", tmp_path), "not a tinyq run folder")
    assert_one_line_error(invoke("convert", tmp_path / "nope"), "does not exist")


@pytest.mark.parametrize("name, ident", [("person-detect", "person_detect"), ("pd w4 (v2)", "pd_w4_v2"),
                                         ("4bit", "m_4bit"), ("---", "model")])
def test_c_identifier(name, ident):
    from tinyq.export.bundle import c_identifier

    assert c_identifier(name) == ident


@pytest.mark.parametrize("op, method", [("DEPTHWISE_CONV_2D", "DepthwiseConv2D"), ("FULLY_CONNECTED", "FullyConnected"),
                                        ("AVERAGE_POOL_2D", "AveragePool2D"), ("TFLM_DECODE", "Decode")])
def test_resolver_names(op, method):
    from tinyq.export.bundle import resolver_name

    assert resolver_name(op) == method


def test_float_tflite_is_refused_by_check_and_export(folders, tmp_path):
    from tinyq._tf import keras, tf

    i = keras.Input((16, 16, 3))
    model = keras.Model(i, keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(4, 3)(i))))
    path = tmp_path / "float.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    assert_one_line_error(invoke("check", path, "--data", folders / "labelled"),
                          "has FLOAT32 input / FLOAT32 output", "tinyq checks full-integer")
    r = invoke("export", path, "--out", tmp_path / "fw")
    assert_one_line_error(r, "has FLOAT32 input / FLOAT32 output", "tinyq convert makes one")
    assert not (tmp_path / "fw").exists()


def test_help_and_version_load_no_tensorflow():
    """--help, --version and the method list come before any TensorFlow import (it takes seconds)."""
    import subprocess
    import sys

    code = ("import sys; from click.testing import CliRunner; from tinyq.cli import main; "
            "r = [CliRunner().invoke(main, a) for a in (['--help'], ['--version'], ['train', '--help'])]; "
            "assert all(x.exit_code == 0 for x in r), [x.output for x in r]; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("kind", ["h5", "keras", "savedmodel", "json", "run-without-model"])
def test_a_file_that_is_not_a_flatbuffer_is_named(kind, tmp_path):
    path = tmp_path / {"h5": "m.h5", "keras": "m.keras", "savedmodel": "sm", "json": "config.json",
                       "run-without-model": "run"}[kind]
    if kind == "h5":
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    elif kind == "keras":
        path.write_bytes(b"PK\x03\x04" + bytes(100))
    elif kind == "json":
        path.write_text('{"format_version": 1}')
    else:
        path.mkdir()
        (path / ("saved_model.pb" if kind == "savedmodel" else "config.json")).write_bytes(b"x")
    expected = {"h5": "is a Keras model (HDF5)", "keras": "a .keras model", "savedmodel": "SavedModel",
                "json": "is a text file", "run-without-model": "run folder without model.tflite"}[kind]
    for command in ("inspect", "check"):
        assert_one_line_error(invoke(command, path, "--data", tmp_path) if command == "check"
                              else invoke(command, path), expected)


def test_export_onto_a_file_fails_before_any_work(tmp_path):
    """The output is checked before the model is even read (it was measured for 13 s first)."""
    target = tmp_path / "README.md"
    target.write_text("mine")
    for out in (target, target / "fw"):
        assert_one_line_error(invoke("export", tmp_path / "not-read.tflite", "--out", out), "is a file, not a folder")
    assert target.read_text() == "mine"


@pytest.mark.parametrize("option", ["--bits", "--act-bits"])
def test_out_of_range_bits_name_the_range(option):
    assert_one_line_error(invoke("train", "person-detect", option, 16), "between 2 and 8")


@pytest.mark.parametrize("command, args, fragment", [
    ("train", ["--limit", "-1"], "--limit"), ("train", ["--seed", "-1"], "--seed"),
    ("train", ["--seed", str(2 ** 40)], "--seed"), ("train", ["--synthetic-images", "1"], "--synthetic-images"),
    ("train", ["--size-budget", "1" + "0" * 400], "larger than any microcontroller"),
    ("quantize", ["m.h5", "--data", "d", "--value-range", "0,0"], "lo < hi"),
    ("quantize", ["m.h5", "--data", "d", "--value-range", "0,inf"], "lo < hi"),
    ("check", ["m.tflite", "--data", "d", "--limit", "0"], "--limit"),
])
def test_options_out_of_bounds_are_one_line_errors(command, args, fragment):
    r = invoke(command, *([] if command != "train" else ["person-detect"]), *args)
    assert_one_line_error(r, fragment)


def test_configs_check_bounds_from_python_too():
    from tinyq.errors import TinyqError
    from tinyq.pipeline.quantize import QuantizeJob
    from tinyq.pipeline.train import TrainConfig

    for bad in ({"seed": -1}, {"seed": 2 ** 40}, {"limit": 0}, {"synthetic_images": 1}):
        with pytest.raises(TinyqError):
            TrainConfig(**bad)
    with pytest.raises(TinyqError, match="lo < hi"):
        QuantizeJob(model="m.h5", data="d", value_range=(1.0, 1.0))
