"""Hostile and degenerate inputs (issue 30): no signal, no traceback, one error line."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_a_file_that_aborts_tflm_cannot_take_tinyq_down(folders, tmp_path):
    """An untrained MobileNetV2's converted file makes TFLM abort (SIGABRT) while it prepares the softmax;
    the converter's own TFLM checks used to run it in the tinyq process, which died with exit 134."""
    from tinyq._tf import keras

    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=2)
    model.save(tmp_path / "mnv2.h5")
    done = subprocess.run([sys.executable, "-m", "tinyq.cli", "quantize", str(tmp_path / "mnv2.h5"), "--ptq", "tinyq",
                           "--bits", "4", "--data", str(folders / "labelled"), "--unlabeled", "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: TFLM cannot run the converted file: TFLM crashed on it (SIGABRT)"), last
    assert "Traceback" not in done.stderr
