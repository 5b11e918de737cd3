"""Shared fixtures: the ../shared data (skipped with a reason when absent), trained runs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import Phase

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("TINYQ_SHARED", ROOT.parent / "shared"))
BITS = (2, 4, 8)
RES = 32  # input size of the small float model users bring in the quantize tests


# property tests of hostile input: no shrinking (a failing case is reported as drawn; each shrink step
# would run TFLM on the case again)
QUICK = (Phase.explicit, Phase.reuse, Phase.generate)


def battery(default: int) -> int:
    """Examples per property test of hostile input: ``default`` in the suite, more with
    ``TINYQ_BATTERY=N`` (the battery docs/benchmarks.md records runs them N at a time)."""
    return int(os.environ.get("TINYQ_BATTERY", default))


def needs_device_tools():
    """The Arm toolchain, QEMU and make are part of the test environment (the README's test command installs
    them): missing, the device tests fail and say which; only ../shared's TFLM tree may be absent (skipped)."""
    import shutil

    missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm", "make") if shutil.which(t) is None]
    assert not missing, (f"{', '.join(missing)} not installed: the README's test command installs "
                         "gcc-arm-none-eabi, libnewlib-arm-none-eabi, qemu-system-arm and make")


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests read the project's shared data from ../shared "
                    "(set TINYQ_SHARED to its location)")
    return path


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """person-detect trained at 2, 4 and 8 bits (300 synthetic images, 1 + 1 epochs): {bits: RUN}."""
    from click.testing import CliRunner

    from tinyq.cli import main

    root = tmp_path_factory.mktemp("runs")
    out = {}
    for bits in BITS:
        args = ("train", "person-detect", "--from-scratch", "--bits", bits, "--epochs", 1, "--qat-epochs", 1,
                "--synthetic-images", 300, "--batch", 32, "--out", root / f"w{bits}")
        r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert r.exit_code == 0, r.output + r.stderr
        out[bits] = root / f"w{bits}"
    return out


@pytest.fixture(scope="session")
def people96() -> Path:
    return shared_path("data", "people96")


@pytest.fixture(scope="session")
def vww_dev() -> Path:
    return shared_path("data", "vww-dev")


@pytest.fixture(scope="session")
def float_model(tmp_path_factory):
    """A small float classifier trained a little on synthetic figures, saved as .h5."""
    from tinyq._tf import keras
    from tinyq.data import synthetic

    L = keras.layers

    keras.utils.set_random_seed(0)
    i = L.Input((RES, RES, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(i)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    x = L.Conv2D(16, 1, use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    x = L.AveragePooling2D(16)(x)
    x = L.Flatten()(x)
    model = keras.Model(i, L.Dense(2, activation="softmax")(x))  # the layout of vww_96.h5
    data = synthetic(200, size=RES, seed=5)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(data.x / 255.0, data.y, epochs=2, verbose=0)
    path = tmp_path_factory.mktemp("model") / "float.h5"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    from PIL import Image

    from tinyq.data import synthetic

    root = tmp_path_factory.mktemp("data")
    data = synthetic(120, size=64, seed=9)
    for i, (x, y) in enumerate(zip(data.x, data.y)):
        labelled = root / "labelled" / ("person" if y else "non_person")
        flat = root / "flat" / f"batch{i % 3}"
        for folder in (labelled, flat):
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x).save(folder / f"{i}.jpg")
    return root
