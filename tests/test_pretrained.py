"""The shipped pretrained detector, data-free quantization from generated images, and the train
command's two paths (from the pretrained model by default, ``--from-scratch``)."""
from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from click.testing import CliRunner

from conftest import shared_path
from tinyq import recipes
from tinyq.cli import main
from tinyq.errors import TinyqError
from tinyq.pipeline.options import PRETRAINED, SCRATCH, TrainConfig, distill_epochs


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_shipped_model_is_packaged_with_its_licence_and_provenance():
    recipe = recipes.get("person-detect")
    path = recipe.pretrained_path
    assert path.is_file() and path.name == "vww_96.h5"
    with h5py.File(path) as f:
        assert "model_weights" in f and "optimizer_weights" not in f  # stored without optimizer state
    folder = path.parent
    assert "Apache License" in (folder / "LICENSE-Apache-2.0.txt").read_text()
    notice = (folder / "vww_96.md").read_text()
    assert "mlcommons/tiny" in notice and "sha256" in notice and "Apache" in notice


def test_shipped_weights_equal_the_mlperf_file():
    from tinyq.qat import load_model

    upstream = shared_path("models", "vww_96.h5")
    ours = load_model(recipes.get("person-detect").pretrained_path)
    theirs = load_model(upstream)
    assert ours.count_params() == theirs.count_params() == 221_794
    assert all(np.array_equal(a, b) for a, b in zip(ours.get_weights(), theirs.get_weights()))


def test_train_defaults_follow_the_path():
    pretrained = TrainConfig()
    assert pretrained.starts_pretrained()
    assert (pretrained.qat_epochs, pretrained.qat_lr, pretrained.synthetic_images) == (
        distill_epochs(None), PRETRAINED["qat_lr"], PRETRAINED["synthetic_images"])
    assert TrainConfig(data="photos").qat_epochs == distill_epochs("photos") < distill_epochs(None)
    scratch = TrainConfig(from_scratch=True)
    assert not scratch.starts_pretrained()
    assert (scratch.epochs, scratch.qat_epochs, scratch.lr) == (SCRATCH["epochs"], SCRATCH["qat_epochs"], SCRATCH["lr"])
    job = TrainConfig(bits=2, data="photos", qat_epochs=4).quantize_job()
    assert job.model.endswith("vww_96.h5") and job.data == "photos" and job.epochs == 4 and not job.agreement
    assert TrainConfig().quantize_job().agreement  # no data: generated images, labelled by the model


@pytest.mark.parametrize("bad, fragment", [
    ({"epochs": 3}, "--from-scratch"), ({"lr": 0.1}, "--from-scratch"), ({"channels": 1}, "needs --from-scratch"),
    ({"init": "f.h5", "from_scratch": True}, "pass one of them"),
])
def test_pretrained_path_refuses_float_phase_options(bad, fragment):
    with pytest.raises(TinyqError, match=fragment):
        TrainConfig(**bad)


@pytest.mark.parametrize("args, fragment", [
    (["train", "person-detect", "--epochs", "3"], "--from-scratch"),
    (["train", "person-detect", "--bits", "2", "--size-budget", "40KB"], "--size-budget"),
    (["quantize", "missing.h5"], "does not exist"),
    (["train", "person-detect", "--bits", "16"], "between 2 and 8"),
    (["check", "keras.h5", "--data", "photos"], "is a Keras model"),
    (["check", "missing.tflite", "--data", "photos"], "does not exist"),
    (["inspect", "keras.h5"], "is a Keras model"),
    (["export", "keras.h5", "--out", "fw"], "is a Keras model"),
    (["convert", "missing-run"], "does not exist"),
    (["report", "missing-run"], "does not exist"),
    (["device", "missing.tflite", "--tflm", "no-tree"], "no-tree"),
    (["plan", "missing.h5", "--size-budget", "40KB"], "does not exist"),
])
def test_argument_errors_come_before_tensorflow(args, fragment, tmp_path):
    """Every argument error is answered without importing TensorFlow (so in well under a second)."""
    (tmp_path / "keras.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    probe = ("import sys, runpy; sys.argv = ['tinyq'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('tinyq.cli', run_name='__main__')\n"
             "except SystemExit as e:\n"
             "    print('TF' if 'tensorflow' in sys.modules else 'noTF', e.code, file=sys.stdout)\n")
    r = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=tmp_path)
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert fragment in r.stderr
    assert r.stdout.split() in (["noTF", "1"], ["noTF", "2"]), r.stdout


def _bn_model(seed: int = 0):
    """A small model whose BN layer remembers the statistics of reddish images (what training would leave)."""
    from tinyq._tf import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    i = L.Input((16, 16, 3))
    h = L.Conv2D(4, 3, padding="same", use_bias=False)(i)
    x = L.BatchNormalization()(h)
    x = L.ReLU(6.0)(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(i, L.Dense(2, activation="softmax")(x))
    rng = np.random.default_rng(seed)
    reddish = np.clip(rng.normal([0.8, 0.2, 0.3], 0.1, (64, 16, 16, 3)), 0, 1).astype(np.float32)
    seen = keras.Model(i, h)(reddish).numpy().reshape(-1, 4)
    model.layers[2].moving_mean.assign(seen.mean(0))
    model.layers[2].moving_variance.assign(seen.var(0))
    return model


def test_inverted_images_match_the_batchnorm_statistics():
    from tinyq._tf import keras
    from tinyq.data.invert import invert

    model = _bn_model()
    # a 16x16 toy: a light smoothness prior (the default suits 96x96 photos)
    images = invert(model, 24, seed=3, steps=80, batch=12, tv_weight=1.0)
    assert images.x.shape == (24, 16, 16, 3) and images.x.dtype == np.uint8
    assert sorted(np.bincount(images.y)) == [12, 12]  # targets balanced over the classes
    bn = model.layers[2]
    probe = keras.Model(model.inputs, bn.input)

    def distance(pixels):
        h = probe(pixels.astype(np.float32) / 255.0).numpy().reshape(-1, 4)
        return (np.linalg.norm(h.mean(0) - bn.moving_mean.numpy())
                + np.linalg.norm(h.std(0) - np.sqrt(bn.moving_variance.numpy())))

    start = invert(model, 24, seed=3, steps=1, batch=12, tv_weight=1.0)  # one step from the initial images
    assert distance(images.x) < 0.6 * distance(start.x)
    assert images.x[..., 0].mean() > images.x[..., 1].mean()  # the red the statistics remember
    again = invert(model, 24, seed=3, steps=80, batch=12, tv_weight=1.0)
    assert np.array_equal(again.x, images.x)  # seeded


def test_generated_sets_are_cached(tmp_path):
    from tinyq.data.invert import generated_splits

    model = _bn_model()
    calls = []
    first, hit = generated_splits(model, 40, (0.0, 1.0), 1, cache=tmp_path, progress=lambda d, t: calls.append(d))
    assert not hit and calls and len(list(tmp_path.glob("*.npz"))) == 1
    assert [len(first[s]) for s in ("train", "val", "test")] == [32, 4, 4]
    second, hit = generated_splits(model, 40, (0.0, 1.0), 1, cache=tmp_path)
    assert hit and all(np.array_equal(first[s].x, second[s].x) for s in first)
    (next(tmp_path.glob("*.npz"))).write_bytes(b"damaged")
    third, hit = generated_splits(model, 40, (0.0, 1.0), 1, cache=tmp_path)
    assert not hit and np.array_equal(third["train"].x, first["train"].x)  # made again, the same


def test_data_free_needs_batchnorm(tmp_path):
    from tinyq._tf import keras

    L = keras.layers
    i = L.Input((16, 16, 3))
    model = keras.Model(i, L.Dense(2, activation="softmax")(L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(i))))
    model.save(tmp_path / "plain.h5")
    r = invoke("quantize", tmp_path / "plain.h5", "--out", tmp_path / "run")
    assert r.exit_code == 1 and "no BatchNormalization layers" in r.stderr and "--data" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_first_command_quantizes_the_pretrained_detector_data_free(tmp_path, monkeypatch):
    """``tinyq train person-detect --bits 2`` with no data: the shipped model, generated images,
    every figure named agreement; --json gives the summary as one object."""
    monkeypatch.setenv("TINYQ_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    r = invoke("train", "person-detect", "--bits", 2, "--synthetic-images", 48, "--qat-epochs", 1, "--json",
               "--out", out)
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["measure"] == "agreement" and summary["data"] == "generated from the model"
    assert summary["bytes"] == (out / "model.tflite").stat().st_size < 40 * 1024
    assert "generating 48 images from the model's batch-norm statistics" in r.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["model"].endswith("vww_96.h5") and config["train"]["data"] is None
    metrics = json.loads((out / "metrics.json").read_text())
    assert "tflm_test_agreement" in metrics and not [k for k in metrics if k.endswith("_accuracy")]
    assert len(list((tmp_path / "cache" / "generated").glob("*.npz"))) == 1


@pytest.mark.slow
def test_train_from_the_pretrained_detector_on_labelled_photos(tmp_path, folders):
    """With --data, the shipped model is distilled with the labels: accuracy, the float model's beside."""
    out = tmp_path / "run"
    r = invoke("train", "person-detect", "--bits", 4, "--data", folders / "labelled", "--qat-epochs", 1,
               "--batch", 16, "--quiet", "--out", out)
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""  # --quiet: no progress at all
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["distill"] == 0.5 and not config["train"]["unlabeled"]  # distillation plus the labels
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["measure"] == "accuracy" and {"float_test_accuracy", "tflm_test_accuracy"} <= set(metrics)
    assert "float model (Keras)" in r.stdout and "model.tflite (TFLM)" in r.stdout
