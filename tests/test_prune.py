"""Dead channels are dropped with every output unchanged, through each pattern the pruner knows."""
import numpy as np
import pytest

from tinyq._tf import keras
from tinyq.fold import fold, fold_batchnorm

L = keras.layers


def _model(tail: str, relu6: bool):
    """conv -> BN -> ReLU -> [depthwise -> BN -> ReLU ->] pointwise -> ... -> classifier, some channels dead."""
    keras.utils.set_random_seed(1)
    act = (lambda n: L.ReLU(6.0, name=n)) if relu6 else (lambda n: L.Activation("relu", name=n))
    i = L.Input((12, 12, 3))
    x = act("a1")(L.BatchNormalization(name="bn1")(L.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(i)))
    x = act("a2")(L.BatchNormalization(name="bn2")(L.DepthwiseConv2D(3, padding="same", name="dw")(x)))
    x = act("a3")(L.BatchNormalization(name="bn3")(L.Conv2D(10, 1, use_bias=False, name="pw")(x)))
    if tail == "conv":  # a zero input channel of a 3x3 conv, zero padded
        x = L.Activation("relu", name="a4")(L.Conv2D(6, 3, padding="same", name="c3")(x))
    elif tail == "depthwise":  # a depthwise reading it: its bias constant goes into the next 1x1 conv
        x = act("a4")(L.DepthwiseConv2D(3, padding="same", name="dw2")(x))
        x = act("a5")(L.Conv2D(6, 1, name="pw2")(x))
    elif tail == "depthwise-pool":  # ... or into the classifier after global pooling
        x = act("a4")(L.DepthwiseConv2D(3, padding="same", name="dw2")(x))
    x = L.Flatten()(L.AveragePooling2D(12)(x)) if tail == "pool-flatten" else L.GlobalAveragePooling2D()(x)
    model = keras.Model(i, L.Dense(2, activation="softmax", name="head")(L.Dropout(0.1)(x)))
    rng = np.random.default_rng(0)
    for layer in model.layers:  # trained-looking statistics
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, n), rng.normal(0, 0.3, n), rng.normal(0, 0.3, n),
                               rng.uniform(0.3, 3, n)])
        elif isinstance(layer, L.DepthwiseConv2D):  # biases of both signs: constants to fold
            layer.set_weights([layer.get_weights()[0], rng.normal(0, 0.5, layer.get_weights()[1].shape)])
    gamma, beta, mean, var = model.get_layer("bn3").get_weights()
    gamma[[1, 4, 5, 7]] = 0.0  # dead: gamma trained to 0 ...
    beta[[1, 4, 5]] = -0.4  # ... with a negative shift: 0 after the ReLU, droppable
    beta[7] = 0.3  # a positive constant: kept (the depthwise's padding makes it non-constant)
    model.get_layer("bn3").set_weights([gamma, beta, mean, var])
    return model


@pytest.mark.parametrize("relu6", [False, True])
@pytest.mark.parametrize("tail", ["conv", "depthwise", "depthwise-pool", "pool", "pool-flatten"])
def test_dead_channels_dropped_outputs_unchanged(tail, relu6):
    model = _model(tail, relu6)
    kept = fold_batchnorm(model, drop_dead=False)
    folding = fold(model)
    pruned = folding.model
    assert folding.dropped_channels == {"pw": 3}
    assert pruned.get_layer("pw").kernel.shape[-1] == 7
    assert pruned.count_params() < kept.count_params()
    x = np.random.default_rng(2).random((16, 12, 12, 3)).astype(np.float32)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_nothing_dead_nothing_changes():
    i = L.Input((8, 8, 3))
    x = L.ReLU()(L.Conv2D(4, 3)(i))
    model = keras.Model(i, L.Dense(2)(L.GlobalAveragePooling2D()(x)))
    assert fold(model).dropped_channels == {}


@pytest.mark.slow
def test_a_run_logs_and_records_what_it_dropped(folders, tmp_path):
    import json

    from click.testing import CliRunner

    from tinyq.cli import main

    _model("depthwise", False).save(tmp_path / "m.h5")
    r = CliRunner().invoke(main, ["quantize", str(tmp_path / "m.h5"), "--data", str(folders / "labelled"), "--bits", "4",
                                  "--ptq", "tinyq", "--out", str(tmp_path / "run")], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    assert "dead channels dropped (zero weights, ReLU output 0; outputs unchanged): 3 in pw 3" in r.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["dropped_channels"] == {"pw": 3}
    assert "- dead channels dropped at folding (outputs unchanged): pw 3" in (tmp_path / "run" / "report.md").read_text()
