"""Truncated, mutated and foreign files given to inspect, export and check: one-line errors, no crash, no hang.

Property-based: hypothesis draws the damage (a cut, byte flips, a splice of random bytes) to a
real tinyq file. The commands run in a child process, because TFLM and LiteRT are C++ and
a crash there would take the test process with it; the test fails if the child dies.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import QUICK, battery

pytestmark = pytest.mark.slow  # quantizes models and runs every command on damaged files


CHILD = r'''
import json, sys
from pathlib import Path
from click.testing import CliRunner
from tinyq.cli import main

data_dir, files = sys.argv[1], sys.argv[2:]
out = []
for f in files:
    row = {}
    for cmd in (["inspect", f], ["export", f, "--out", f + ".fw"], ["check", f, "--data", data_dir]):
        r = CliRunner().invoke(main, cmd)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        row[cmd[0]] = {"code": r.exit_code, "last": lines[-1] if lines else "",
                       "exception": None if r.exception is None or isinstance(r.exception, SystemExit)
                       else repr(r.exception), "fw_exists": Path(f + ".fw").exists()}
    out.append(row)
print(json.dumps(out))
'''

damage = st.one_of(
    st.tuples(st.just("cut"), st.floats(0.0, 0.999)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0.0, 0.999), st.integers(1, 255)), min_size=1,
                                        max_size=16)),
    st.tuples(st.just("splice"), st.floats(0.0, 0.999), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("foreign"), st.binary(max_size=256)),
)


def _apply(good: bytes, d) -> bytes:
    kind = d[0]
    if kind == "cut":
        return good[: int(d[1] * len(good))]
    if kind == "flip":
        b = bytearray(good)
        for where, mask in d[1]:
            b[int(where * len(b))] ^= mask
        return bytes(b)
    if kind == "splice":
        at = int(d[1] * len(good))
        return good[:at] + d[2] + good[at + len(d[2]):]
    return d[1]


def _quantized(float_model, folders, tmp_path_factory, *options) -> bytes:
    """The .tflite of ``tinyq quantize`` of the small float model with ``options``."""
    from click.testing import CliRunner

    from tinyq.cli import main

    out = tmp_path_factory.mktemp("fuzz") / "run"
    r = CliRunner().invoke(main, ["quantize", str(float_model), "--data", str(folders / "labelled"), *options,
                                  "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    return (out / "model.tflite").read_bytes()


@pytest.fixture(scope="module")
def good_file(float_model, folders, tmp_path_factory):
    return _quantized(float_model, folders, tmp_path_factory, "--bits", "4", "--ptq", "tinyq")


@settings(max_examples=battery(2), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(damage, min_size=12, max_size=12))
@example([("cut", 0.0)] * 11 + [("splice", 0.75, b"\x01")])  # LiteRT loaded it, then invoke raised a RuntimeError
def test_damaged_files_fail_cleanly(good_file, folders, tmp_path_factory, damages):
    folder = tmp_path_factory.mktemp("damaged")
    files = []
    for i, d in enumerate(damages):
        path = folder / f"m{i}.tflite"
        path.write_bytes(_apply(good_file, d))
        files.append(str(path))
    for d, row in zip(damages, _commands_on_all(files, folders)):
        _assert_clean(d[0], row)


def _rewritten(good: bytes, damage) -> bytes:
    """``good`` parsed into the schema's object API, changed by ``damage(model)``, written back."""
    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(good), 0))
    damage(model)
    builder = flatbuffers.Builder(len(good) * 2)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _first_constant(model):
    return next(t for t in model.subgraphs[0].tensors if model.buffers[t.buffer].data is not None)


def _set(obj, attr, value):
    setattr(obj, attr, value)


def _activation(model):
    """The first tensor an op writes (no data): TFLM takes its shape on trust when it plans the arena."""
    sg = model.subgraphs[0]
    return sg.tensors[sg.operators[0].outputs[0]]


def _op(model, builtin: str):
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    code = getattr(schema.BuiltinOperator, builtin)
    return next(op for op in model.subgraphs[0].operators
                if max(model.operatorCodes[op.opcodeIndex].builtinCode,
                       model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode) == code)


def _per_channel(model):
    return next(t for t in model.subgraphs[0].tensors if t.quantization is not None
                and t.quantization.scale is not None and len(t.quantization.scale) > 1)


# Well-formed flatbuffers whose indices, sizes, shapes or options lie, each found by fuzzing. TFLM
# has no verifier and died with SIGSEGV in `tinyq export` on several; tinyq's reader refuses the
# first group ("not a valid .tflite"), a run in a child process the next ("damaged"), and the
# labels check an output wider than the labels.
STRUCTURE = {
    "buffer index out of range": ("not a valid", lambda m: _set(_first_constant(m), "buffer", len(m.buffers) + 7)),
    "data shorter than the shape": ("not a valid", lambda m: _set(_first_constant(m), "shape",
                                                                  [64] + list(_first_constant(m).shape))),
    "op input out of range": ("not a valid", lambda m: _set(m.subgraphs[0].operators[0], "inputs", [1000, 1])),
    "model output out of range": ("not a valid", lambda m: _set(m.subgraphs[0], "outputs", [1000])),
    "per-channel axis out of range": ("damaged: TFLM crashed", lambda m: _set(_per_channel(m).quantization,
                                                                    "quantizedDimension", -637534205)),
    # refused by tinyq's reader since issue 30 (element counts); TFLM crashed on it before
    "activation too large for any arena": ("past any one's memory", lambda m: _set(_activation(m), "shape",
                                                                                   [1, 16, 16, 1979711504])),
    "output wider than its op computes": ("not one score per label", lambda m: _set(
        m.subgraphs[0].tensors[m.subgraphs[0].outputs[0]], "shape", [1, 43778])),
    "mean over an axis its input lacks": ("damaged: TFLM reported an error running it", lambda m: _set(
        m.buffers[m.subgraphs[0].tensors[_op(m, "MEAN").inputs[1]].buffer], "data",
        np.array([1, 9], np.int32).view(np.uint8))),
    # valid flatbuffers that are not what tinyq expects (issue 30): tracebacks, or a hang decoding images
    "no inputs": ("0 inputs", lambda m: _set(m.subgraphs[0], "inputs", [])),
    "no outputs": ("0 outputs", lambda m: _set(m.subgraphs[0], "outputs", [])),
    "input without quantization": ("without one finite positive scale", lambda m: _set(_input(m), "quantization", None)),
    "input scale 0": ("without one finite positive scale", lambda m: _set(_input(m).quantization, "scale", [0.0])),
    "input scale NaN": ("without one finite positive scale",
                        lambda m: _set(_input(m).quantization, "scale", [float("nan")])),
    "input of 4000x4000": ("past what tinyq runs", lambda m: _set(_input(m), "shape", [1, 4000, 4000, 3])),
}


def _input(model):
    sg = model.subgraphs[0]
    return sg.tensors[sg.inputs[0]]


def _misaligned_shape(good: bytes) -> bytes:
    """Tensor 4's shape vector moved to an odd address holding a zero length: Python's reader sees a
    scalar, LiteRT's verifier an unaligned vector. A one-byte change did this, and TFLM looped on it
    for minutes."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    t = schema.Model.GetRootAsModel(bytearray(good), 0).Subgraphs(0).Tensors(4)
    at = t._tab.Pos + t._tab.Offset(4)  # the uoffset of field 0, shape, relative to itself
    target = next(i for i in range(at + 5, len(good) - 4, 2) if good[i:i + 4] == bytes(4))
    return good[:at] + (target - at).to_bytes(4, "little") + good[at + 4:]


def _commands_on_all(paths, folders, timeout: int = 900) -> list[dict]:
    """inspect, export and check on each file, in one child process that must not die."""
    child = subprocess.run([sys.executable, "-c", CHILD, str(folders / "labelled"), *map(str, paths)],
                           capture_output=True, text=True, timeout=timeout)
    assert child.returncode == 0, f"a runtime crashed (exit {child.returncode}): {child.stderr[-800:]}"
    return json.loads(child.stdout.strip().splitlines()[-1])


def _commands_on(path, folders) -> dict:
    return _commands_on_all([path], folders)[0]


def _assert_clean(label, row: dict) -> None:
    """Each command succeeded, or ended with one ``error:`` line and no export folder; no exception."""
    for cmd, r in row.items():
        assert r["exception"] is None and r["code"] in (0, 1), (label, cmd, r)
        if r["code"] == 1:
            assert r["last"].startswith("error: ") and "Traceback" not in r["last"], (label, cmd, r)
            assert not (cmd == "export" and r["fw_exists"]), (label, "export left a partial folder")


def _assert_refused(row: dict, expected: str) -> None:
    for cmd, r in row.items():
        assert r["exception"] is None and not r["fw_exists"], (cmd, r)
        if cmd == "inspect" and "not a valid" not in expected and "past any one's memory" not in expected:
            assert r["code"] == 0, r  # it reads the structure, runs nothing: what it lists is what the file says
        else:
            assert r["code"] == 1 and r["last"].startswith("error: ") and expected in r["last"], (cmd, r)


@pytest.mark.parametrize("case", sorted(STRUCTURE))
def test_lying_structure_fails_cleanly(good_file, folders, tmp_path, case):
    expected, damage = STRUCTURE[case]
    path = tmp_path / "m.tflite"
    path.write_bytes(_rewritten(good_file, damage))
    _assert_refused(_commands_on(path, folders), expected)


def test_a_file_that_does_not_verify_fails_cleanly(good_file, folders, tmp_path):
    from tinyq.tflite import flatbuffer

    damaged = _misaligned_shape(good_file)
    assert flatbuffer.parse(damaged).tensors[4].shape == ()  # tinyq's own reader cannot see it
    path = tmp_path / "m.tflite"
    path.write_bytes(damaged)
    _assert_refused(_commands_on(path, folders), "damaged: its flatbuffer does not verify")


@pytest.fixture(scope="module")
def good_2bit_file(float_model, folders, tmp_path_factory):
    return _quantized(float_model, folders, tmp_path_factory, "--bits", "2", "--epochs", "0")


def test_a_2bit_file_declaring_more_outputs_fails_cleanly(good_2bit_file, folders, tmp_path):
    """LiteRT cannot load a LUT file (DECODE), so no shapes are computed; TFLM returned 82 scores from
    past the end of a 2-wide FULLY_CONNECTED (found by fuzzing: export's traceback, check's 0.8% accuracy)."""
    damaged = _rewritten(good_2bit_file, STRUCTURE["output wider than its op computes"][1])
    path = tmp_path / "m.tflite"
    path.write_bytes(damaged)
    row = _commands_on(path, folders)
    for cmd in ("export", "check"):
        r = row[cmd]
        assert r["code"] == 1 and "not one score per label" in r["last"] and r["exception"] is None, (cmd, r)
    assert not row["export"]["fw_exists"]


def test_a_decode_op_with_one_input_fails_cleanly(good_2bit_file, folders, tmp_path):
    """A valid flatbuffer whose DECODE lost its value-table input: inspect's traceback (issue 30)."""
    def one_input(model):
        op = _op_by_custom(model, b"DECODE")
        op.inputs, op.outputs = op.inputs[:1], op.outputs[:1]

    path = tmp_path / "m.tflite"
    path.write_bytes(_rewritten(good_2bit_file, one_input))
    _assert_refused(_commands_on(path, folders), "not a valid")


def _op_by_custom(model, code: bytes):
    return next(op for op in model.subgraphs[0].operators if code in (model.operatorCodes[op.opcodeIndex].customCode or b""))


def test_rewriting_keeps_a_good_file_good(good_file):
    """The object-API round trip above changes nothing a reader sees: the damage is all a test adds."""
    from tinyq.tflite import flatbuffer

    a, b = flatbuffer.parse(good_file), flatbuffer.parse(_rewritten(good_file, lambda m: None))
    assert [(t.type, t.shape, t.nbytes) for t in a.tensors] == [(t.type, t.shape, t.nbytes) for t in b.tensors]
    assert [(o.name, o.inputs, o.outputs) for o in a.ops] == [(o.name, o.inputs, o.outputs) for o in b.ops]


def _edits():
    """Edits that keep a flatbuffer well formed but make it lie: subgraph inputs and outputs, a tensor's
    shape, type, scales, zero points or quantized axis, an op's inputs, outputs or opcode, a buffer's
    bytes; each picks its target by a fraction of the candidates."""
    ints = st.integers(-3, 1 << 20) | st.integers(-(1 << 31), (1 << 31) - 1)
    floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
    index = st.floats(0.0, 0.999)
    return st.one_of(
        st.tuples(st.just("graph_inputs"), st.lists(st.integers(-2, 80), max_size=3)),
        st.tuples(st.just("graph_outputs"), st.lists(st.integers(-2, 80), max_size=3)),
        st.tuples(st.just("shape"), index, st.lists(ints, max_size=5)),
        st.tuples(st.just("type"), index, st.integers(0, 20)),
        st.tuples(st.just("scale"), index, st.lists(floats, max_size=4)),
        st.tuples(st.just("zero_point"), index, st.lists(ints, max_size=4)),
        st.tuples(st.just("axis"), index, ints),
        st.tuples(st.just("op_inputs"), index, st.lists(st.integers(-2, 80), max_size=4)),
        st.tuples(st.just("op_outputs"), index, st.lists(st.integers(-2, 80), max_size=2)),
        st.tuples(st.just("opcode"), index, st.integers(0, 12)),
        st.tuples(st.just("buffer"), index, st.binary(max_size=48)),
    )


def _edit(model, edit) -> None:
    import numpy as np
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    sg = model.subgraphs[0]
    kind = edit[0]
    if kind == "graph_inputs":
        sg.inputs = edit[1]
    elif kind == "graph_outputs":
        sg.outputs = edit[1]
    elif kind in ("shape", "type", "scale", "zero_point", "axis"):
        t = sg.tensors[int(edit[1] * len(sg.tensors))]
        if kind == "shape":
            t.shape = edit[2]
        elif kind == "type":
            t.type = edit[2]
        else:
            if t.quantization is None:
                t.quantization = schema.QuantizationParametersT()
            q = t.quantization
            if kind == "scale":
                q.scale = np.array(edit[2], np.float32)
            elif kind == "zero_point":
                q.zeroPoint = np.array(edit[2], np.int64)
            else:
                q.quantizedDimension = edit[2]
    elif kind in ("op_inputs", "op_outputs", "opcode"):
        op = sg.operators[int(edit[1] * len(sg.operators))]
        if kind == "op_inputs":
            op.inputs = edit[2]
        elif kind == "op_outputs":
            op.outputs = edit[2]
        else:
            op.opcodeIndex = edit[2]
    else:
        with_data = [b for b in model.buffers if b.data is not None] or model.buffers
        with_data[int(edit[1] * len(with_data))].data = np.frombuffer(edit[2], np.uint8)


@settings(max_examples=battery(2), deadline=None, derandomize=True, phases=QUICK,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(_edits(), min_size=1, max_size=3), min_size=8, max_size=8))
def test_odd_but_valid_flatbuffers_fail_cleanly(good_file, good_2bit_file, folders, tmp_path_factory, edit_sets):
    """Hypothesis builds well-formed flatbuffers that lie about their structure (from a real INT4
    and a real 2-bit file); inspect, export and check run on each in a child process: it must not
    die, and each command succeeds or gives one ``error:`` line with no export folder left."""
    folder = tmp_path_factory.mktemp("odd")
    files = []
    for i, edits in enumerate(edit_sets):
        base = good_2bit_file if i % 2 else good_file
        path = folder / f"m{i}.tflite"
        path.write_bytes(_rewritten(base, lambda m, edits=edits: [_edit(m, e) for e in edits]))
        files.append(str(path))
    for f, row in zip(files, _commands_on_all(files, folders, timeout=1200)):
        _assert_clean(f, row)
