"""2-bit LUT compression: one value table for tinyq's grid, per-channel tables otherwise, same TFLM outputs."""
import numpy as np
import pytest
from click.testing import CliRunner

from tinyq.cli import main
from tinyq.tflite import flatbuffer
from tinyq.convert import lut


def test_shared_levels_sets_dead_channels_to_the_smallest_level():
    values = np.array([[-3, -1, 1], [0, 0, 0], [3, 1, -1]], np.int8)
    got = lut.shared_levels(values, 0, 2)
    np.testing.assert_array_equal(got, [[-3, -1, 1], [-1, -1, -1], [3, 1, -1]])  # |-1| = |1|: the first
    np.testing.assert_array_equal(values[1], 0)  # the input is not changed
    # channels on the last axis (depthwise)
    np.testing.assert_array_equal(lut.shared_levels(values.T, 1, 2), got.T)


def test_shared_levels_keeps_values_or_refuses():
    live = np.array([[-3, 1], [3, -1]], np.int8)
    assert lut.shared_levels(live, 0, 2) is live  # no dead channel: unchanged
    with_zero = np.array([[0, 1], [0, 0]], np.int8)
    assert lut.shared_levels(with_zero, 0, 2) is with_zero  # 0 is a level: the dead row reads it
    assert lut.shared_levels(np.array([[-3, -1], [1, 2], [3, 3]], np.int8), 0, 2) is None  # 5 levels
    assert lut.shared_levels(np.zeros((2, 3), np.int8), 0, 2) is None  # nothing to share


def _tables(data: bytes) -> list[bytes]:
    fb = flatbuffer.parse(data)
    return [bytes(fb.tensors[op.inputs[1]].data) for op in fb.ops if op.name in flatbuffer.DECODE_OPS]


@pytest.fixture(scope="module")
def two_bit(float_model, folders, tmp_path_factory):
    """A 2-bit file of every layer, its converter output and the images to run."""
    from tinyq.runtimes import model_input
    from tinyq.contract import InputContract
    from tinyq.convert import converter
    from tinyq.data import load_splits
    from tinyq.qat import load_model

    out = tmp_path_factory.mktemp("lut") / "w2"
    r = CliRunner().invoke(main, ["quantize", str(float_model), "--data", str(folders / "labelled"), "--bits", "2",
                                  "--ptq", "tinyq", "--keep-8bit", "none", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    contract = InputContract(resolution=32)
    model = load_model(out / "model.h5")
    raw = converter.to_tflite(model, np.load(out / "representative.npy"), contract)
    fb = flatbuffer.parse(raw)
    tensors = {i: name for i, (name, bits) in converter.verify(model, fb).items() if bits == 2}
    images = load_splits(folders / "labelled", 32, 3, 0)["test"]
    x = model_input(fb, images.x, contract)
    return out, raw, fb, tensors, x


@pytest.mark.slow
def test_tinyq_grid_gets_one_table_per_tensor_with_the_same_outputs(two_bit):
    from tinyq.runtimes import tflm_outputs

    run, raw, fb, tensors, x = two_bit
    shared = lut.compress(raw, fb, tensors)
    per_channel = lut.compress(raw, fb, tensors, shared_tables=False)
    tables = _tables(shared)
    assert len(tables) == len(tensors) == 4
    for t in tables:  # header with channel stride 0, then the grid's four int8 levels
        assert t[lut.DCM_STRIDE] == 0 and len(t) == lut.DCM_BYTES + 4
        assert sorted(np.frombuffer(t[lut.DCM_BYTES:], np.int8).tolist()) == [-126, -42, 42, 126]
    # per channel: 4 levels per channel; the classifier here has one scale, so one table either way
    assert all(t[lut.DCM_STRIDE] == 4 for t in _tables(per_channel))
    assert sum(len(t) > lut.DCM_BYTES + 4 for t in _tables(per_channel)) == 3
    assert len(shared) < len(per_channel)
    np.testing.assert_array_equal(tflm_outputs(shared, x), tflm_outputs(per_channel, x))
    # the run's own file went the same way
    assert all(t[lut.DCM_STRIDE] == 0 for t in _tables((run / "model.tflite").read_bytes()))
    # inspect counts a LUT tensor's channels from the decoded tensor's scales (compaction drops the indices')
    from tinyq.tflite.breakdown import inspect_model

    rows = [r for r in inspect_model(run / "model.tflite")["tensors"] if r["type"] == "LUT2"]
    assert len(rows) == 4 and sorted(r["channels"] for r in rows) == [1, 8, 8, 16]


def test_channels_with_different_integers_keep_a_table_each(two_bit):
    from tinyq.runtimes import tflm_outputs

    run, raw, fb, tensors, x = two_bit
    index = min(tensors)
    t = fb.tensors[index]
    values = t.data.view(np.int8).reshape(t.shape).copy()
    values[0] = np.where(values[0] > 0, 2, -2)  # channel 0 on {-2, 2}: six integers in the tensor
    edited = lut._edited(raw, {index: values})
    fb2 = flatbuffer.parse(edited)
    shared = lut.compress(edited, fb2, tensors)
    per_channel = lut.compress(edited, fb2, tensors, shared_tables=False)
    tables = dict(zip(sorted(tensors), _tables(shared)))  # DECODE ops follow the tensor order
    strides = sorted(tb[lut.DCM_STRIDE] for tb in tables.values())
    assert strides == [0, 0, 0, 4]
    np.testing.assert_array_equal(tflm_outputs(shared, x), tflm_outputs(per_channel, x))


def test_dead_channel_biases_are_centered_so_a_shared_table_moves_no_output(two_bit):
    """A dead channel reads the shared table's smallest level: its constant output gains a small
    accumulator term. Its bias is moved to the middle of its output's rounding interval: the
    output without the term is unchanged, and no term under half a step moves it."""
    from tinyq.runtimes import tflm_outputs
    from tinyq.tflite.edit import aligned, editor
    from tinyq.convert.constants import center_constant_biases
    from tinyq.fixedpoint import multiply_by_quantized_multiplier as mbqm
    from tinyq.fixedpoint import quantize_multiplier

    run, raw, fb, tensors, x = two_bit
    index = min(tensors)
    op, t = fb.weight_tensors()[index], fb.tensors[index]
    values = t.data.view(np.int8).reshape(t.shape).copy()
    np.moveaxis(values, t.quantized_dimension, 0)[0] = 0  # channel 0 dead: zero weights ...
    step = np.float32(1e-6 / 254)  # ... the converter's floor step ...
    s_in, s_out = (np.float64(fb.tensors[i].scales[0]) for i in (op.inputs[0], op.outputs[0]))
    q, shift = quantize_multiplier(s_in * np.float64(step) / s_out)
    m = q * 2.0 ** (shift - 31)
    edge = int(3.5 / m)  # ... and a bias on the edge between outputs 3 and 4
    while mbqm(edge + 1, q, shift) == 3:
        edge += 1
    while mbqm(edge, q, shift) == 4:
        edge -= 1
    model = editor().read(lut._edited(raw, {index: values}))
    tensors_t = model.subgraphs[0].tensors
    tensors_t[index].quantization.scales = [float(step)] + list(tensors_t[index].quantization.scales[1:])
    bias = np.frombuffer(tensors_t[op.inputs[2]].buffer.data, np.int32).copy()
    bias[0] = edge
    tensors_t[op.inputs[2]].buffer.data = bias.tobytes()
    edited = aligned(bytes(model.build()))
    assert mbqm(edge + 1, q, shift) == 4  # one accumulator unit of weight term moves the old output

    centered, changed = center_constant_biases(edited, flatbuffer.parse(edited), [index])
    assert changed == 1
    new = np.frombuffer(flatbuffer.parse(centered).tensors[op.inputs[2]].data, np.int32).astype(np.int64)
    np.testing.assert_array_equal(new[1:], bias[1:])  # live channels untouched
    assert mbqm(new[0], q, shift) == 3  # the same output without the term
    margin = int(0.45 / m)
    assert mbqm(new[0] - margin, q, shift) == mbqm(new[0] + margin, q, shift) == 3
    fb2 = flatbuffer.parse(centered)
    np.testing.assert_array_equal(tflm_outputs(lut.compress(centered, fb2, tensors), x),
                                  tflm_outputs(lut.compress(edited, flatbuffer.parse(edited), tensors,
                                                            shared_tables=False), x))
