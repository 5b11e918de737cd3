"""Every registered weight quantizer at 2, 4 and 8 bits: grid, gradients, config, conversion view."""
import numpy as np
import pytest

from tinyq._tf import tf
from tinyq.errors import TinyqError
from tinyq.quantizers import grid, mse_scale, registry
from tinyq.quantizers.uniform import uniform_quantize
from tinyq.spec import QuantSpec

BITS = (2, 4, 8)
METHODS = registry.names()


class _Holder(tf.Module):
    """Stands in for a layer in Quantizer.build: only add_weight is used."""

    def __init__(self):
        super().__init__()
        self.added_losses = []

    def add_weight(self, name, shape, initializer, trainable, dtype=tf.float32):
        v = tf.Variable(initializer(shape, dtype=dtype), name=name, trainable=trainable)
        setattr(self, name, v)
        return v

    def add_loss(self, loss):
        self.added_losses.append(loss)


def _build(method, bits, shape=(3, 3, 4, 5), channel_axis=-1):
    q = registry.parse(method).weight_quantizer(bits, channel_axis)
    qvars = q.build(tf.TensorShape(shape), "kernel", _Holder())
    return q, qvars


@pytest.mark.parametrize("bits", BITS)
def test_grid_levels(bits):
    g = grid(bits)
    if bits == 2:
        assert g.levels == [-1.5, -0.5, 0.5, 1.5]
        assert g.container_bits == 8 and g.step_ratio == 84  # levels -126, -42, 42, 126
        assert grid(2, storage=4).step_ratio == 4  # INT4: -6, -2, 2, 6
    else:
        n = 2 ** (bits - 1) - 1
        assert g.levels == [float(v) for v in range(-n, n + 1)]
        assert g.container_bits == (4 if bits == 4 else 8)
    assert len(g.levels) <= 2 ** bits
    top = max(abs(lv) for lv in g.levels) * g.step_ratio
    assert top <= g.container_max < top + g.step_ratio  # spread as wide as the container allows


def test_uniform_forward_golden():
    # scale 0.1; 2-bit mid-rise levels +-0.05, +-0.15; 4-bit mid-tread levels k * 0.1, |k| <= 7
    w = tf.constant([[-1.0], [-0.12], [-0.01], [0.04], [0.09], [0.26]])
    s = tf.constant([0.1])
    np.testing.assert_allclose(uniform_quantize(w, s, grid(2)).numpy().ravel(),
                               [-0.15, -0.15, -0.05, 0.05, 0.05, 0.15], atol=1e-6)
    np.testing.assert_allclose(uniform_quantize(w, s, grid(4)).numpy().ravel(),
                               [-0.7, -0.1, 0.0, 0.0, 0.1, 0.3], atol=1e-6)


def test_uniform_gradient_is_straight_through_inside_and_zero_outside():
    w = tf.Variable([[-1.0], [-0.12], [0.04], [0.26]])
    s = tf.constant([0.1])
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(uniform_quantize(w, s, grid(4)))
    # -1.0 is clipped (below -0.7): no gradient; the others pass straight through
    np.testing.assert_allclose(tape.gradient(y, w).numpy().ravel(), [0.0, 1.0, 1.0, 1.0])


def test_uniform_scale_gradient_lsq():
    # LSQ: d/ds of s*round(w/s) is round(w/s) - w/s inside the range, the clip level outside,
    # times the gradient scale 1/sqrt(n * hi)
    w = tf.constant([[0.26], [-1.0]])
    s = tf.Variable([0.1])
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(uniform_quantize(w, s, grid(4)))
    g = 1.0 / np.sqrt(2 * 7)
    np.testing.assert_allclose(tape.gradient(y, s).numpy(), [((3 - 2.6) + (-7)) * g], rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bits", BITS)
def test_output_on_grid_per_channel(method, bits):
    q, qvars = _build(method, bits)
    w = tf.random.stateless_normal((3, 3, 4, 5), seed=(1, bits)) * 0.2
    qvars["scale"].assign(mse_scale(w.numpy(), bits))
    out = q(w, False, qvars).numpy()
    step = qvars["scale"].numpy() / q.grid.step_ratio
    codes = out / step
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    for c in range(5):
        assert len(np.unique(np.round(codes[..., c]))) <= 2 ** bits
    assert np.abs(np.round(codes)).max() <= q.grid.container_max


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bits", BITS)
def test_depthwise_channel_axis(method, bits):
    q, qvars = _build(method, bits, shape=(3, 3, 6, 1), channel_axis=2)
    assert qvars["scale"].shape == (6,)
    w = tf.random.stateless_normal((3, 3, 6, 1), seed=(2, bits))
    qvars["scale"].assign(mse_scale(w.numpy(), bits, channel_axis=2))
    out = q(w, False, qvars).numpy()
    assert out.shape == (3, 3, 6, 1)
    for c in range(6):
        assert len(np.unique(out[:, :, c, 0])) <= 2 ** bits


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bits", BITS)
def test_depthwise_diagnostics_match_channels_last(method, bits):
    """A depthwise kernel's diagnostics are those of the same channels laid out last."""
    dw, dw_vars = _build(method, bits, shape=(3, 3, 6, 1), channel_axis=2)
    last, last_vars = _build(method, bits, shape=(3, 3, 1, 6), channel_axis=-1)
    w = tf.random.stateless_normal((3, 3, 6, 1), seed=(3, bits))
    dw_vars["scale"].assign(mse_scale(w.numpy(), bits, channel_axis=2))
    for name, v in dw_vars.items():
        last_vars[name].assign(v)
    got, want = dw.diagnostics(w, dw_vars), last.diagnostics(tf.transpose(w, (0, 1, 3, 2)), last_vars)
    assert set(got) == set(want) and "grid_distance" in got
    assert got == pytest.approx(want, rel=1e-6)
    assert got["grid_distance"] > 0  # normal weights are off the grid


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bits", BITS)
def test_dead_channels_leave_diagnostics_and_qgt_alone(method, bits):
    """A dead channel (scale under dead_scale) whose latent weights drifted changes neither the
    layer's diagnostics nor QGT's loss: they are those of the live channels alone."""
    q, qvars = _build(method, bits, shape=(3, 3, 4, 5))
    live, live_vars = _build(method, bits, shape=(3, 3, 4, 3))
    w = tf.random.stateless_normal((3, 3, 4, 5), seed=(4, bits)).numpy()
    w[..., 3:] = 2e-4  # a warm-up's drift, against a step of ~1e-9
    scale = mse_scale(w, bits)
    scale[3:] = 1e-9
    qvars["scale"].assign(scale)
    live_vars["scale"].assign(scale[:3])
    got, want = q.diagnostics(tf.constant(w), qvars), live.diagnostics(tf.constant(w[..., :3]), live_vars)
    assert set(got) == set(want)
    assert got == pytest.approx(want, rel=1e-5)
    assert 0 < got["grid_distance"] < 1
    reg = float(q.regulariser(*q.latent(tf.constant(w), qvars), qvars))
    assert reg == pytest.approx(float(live.regulariser(*live.latent(tf.constant(w[..., :3]), live_vars), live_vars)), rel=1e-5)
    qvars["scale"].assign(np.full(5, 1e-9, np.float32))  # every channel dead: finite, and 0 for QGT
    assert float(q.regulariser(*q.latent(tf.constant(w), qvars), qvars)) == 0.0
    assert all(np.isfinite(v) for v in q.diagnostics(tf.constant(w), qvars).values())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bits", BITS)
def test_get_config_round_trip(method, bits):
    q = registry.parse(method).weight_quantizer(bits, 2)
    cls = type(q)
    again = cls.from_config(q.get_config())
    assert again == q and again.get_config() == {**q.get_config()}
    assert cls.from_config(registry.parse(method).weight_quantizer(bits, None).get_config()).channel_axis is None


@pytest.mark.parametrize("bits", BITS)
def test_mse_scale_beats_max_scale(bits):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 8)).astype(np.float32)
    w[0] *= 8  # an outlier row
    g = grid(bits)

    def err(s):
        q = (np.clip(np.round(w / s - g.offset), g.lo, g.hi) + g.offset) * s
        return ((w - q) ** 2).sum(axis=0)

    best = mse_scale(w, bits)
    naive = np.abs(w).max(axis=0) / g.top_level
    assert np.all(err(best) <= err(naive) + 1e-6)


def test_unknown_method_lists_choices():
    with pytest.raises(TinyqError, match=r"expected one of .*ste.*; got 'nope'"):
        registry.get("nope")


@pytest.mark.parametrize("bits", [1, 9, 0])
def test_unsupported_bits(bits):
    with pytest.raises(TinyqError, match="unsupported weight bits"):
        QuantSpec(weight_bits=bits)
