"""Compaction: every kept step leaves TFLM's (and LiteRT's) outputs identical, buffers stay aligned."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tinyq.cli import main
from tinyq.tflite import flatbuffer


pytestmark = pytest.mark.slow  # converts and compacts trained models


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _buffer_offsets(data: bytes) -> list[tuple[int, int]]:
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(data, 0)
    out = []
    for i in range(model.BuffersLength()):
        b = model.Buffers(i)
        if b.DataLength():
            out.append((b._tab.Vector(b._tab.Offset(4)), b.DataLength()))
    return out


@pytest.fixture(scope="module", params=[2, 4, 8])
def ptq_run(request, float_model, folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("compact") / f"w{request.param}"
    r = _invoke("quantize", float_model, "--data", folders / "labelled", "--bits", request.param, "--ptq", "tinyq",
                "--keep-8bit", "none", "--out", out)
    assert r.exit_code == 0, r.stderr
    return request.param, out


def test_compacted_file_runs_identically_and_is_smaller(ptq_run, folders):
    from tinyq.runtimes import model_input, tflm_outputs
    from tinyq.data import load_splits

    bits, run = ptq_run
    r = _invoke("convert", run, "--keep-uncompacted", "--out", run / "again.tflite")
    assert r.exit_code == 0, r.stderr
    small, big = (run / "again.tflite").read_bytes(), (run / "again.uncompacted.tflite").read_bytes()
    assert len(small) < len(big)
    record = json.loads((run / "again.compaction.json").read_text())
    assert record["bytes_before"] == len(big) and record["bytes_after"] == len(small)
    from tinyq.convert.compact import STEPS

    assert set(record["steps"]) == set(STEPS) and record["steps"]["names"]["kept"]
    assert all(r["kept"] or r["why"] for r in record["steps"].values())  # a rejected step says why
    # LiteRT runs int8 and int4 files and refuses one zero point for many scales: the step is rejected
    # there; a 2-bit LUT file runs in TFLM only, which accepts it
    assert record["steps"]["zero_points"]["kept"] == (bits == 2)
    images = load_splits(folders / "labelled", 32, 3, 0)["test"]
    fb = flatbuffer.parse(big)
    from tinyq.contract import InputContract

    x = model_input(fb, images.x, InputContract(resolution=32))
    np.testing.assert_array_equal(tflm_outputs(small, x), tflm_outputs(big, x))  # images compaction was not verified on
    assert all(start % 16 == 0 for start, n in _buffer_offsets(small) if n >= 16)
    assert all(t.name == "" for t in flatbuffer.parse(small).tensors)
    # inspect names the layers from the map beside the file
    info = json.loads(_invoke("inspect", run / "again.tflite", "--json").stdout)
    weights = [t for t in info["tensors"] if t["kind"] == "weights"]
    assert len(weights) == 4 and all("quant_" in t["name"] for t in weights)


def test_no_compact_keeps_the_converters_file(ptq_run):
    bits, run = ptq_run
    r = _invoke("convert", run, "--no-compact", "--out", run / "raw.tflite")
    assert r.exit_code == 0, r.stderr
    raw = flatbuffer.parse((run / "raw.tflite").read_bytes())
    assert any(t.name for t in raw.tensors) and not (run / "raw.names.json").exists()
    assert len((run / "raw.tflite").read_bytes()) > (run / "model.tflite").stat().st_size
