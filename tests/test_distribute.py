"""--distribute: mirrored over two logical CPU devices and two local workers, against one device's run."""
import json
import os
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tinyq.cli import main

# QAT under a size budget: the sensitivity pass, then training; and --lr: 1e-2, or a half with --scale-lr
JOB = ["--size-budget", "3200", "--epochs", "3", "--batch", "16", "--seed", "1"]


def _tinyq(args, env=None, timeout=900):
    return subprocess.Popen([sys.executable, "-c", "from tinyq.cli import main; main()", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def _finish(proc, timeout=900):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-1500:]
    return out, err


def _losses(run):
    return [e["loss"] for e in json.loads((run / "history.json").read_text())["qat"]]


def _plan(run):
    """(layer, curvature, bits) of the run's size-budget plan."""
    return [(r["name"], r["curvature"], r["bits"]) for r in json.loads((run / "plan.json").read_text())["layers"]]


def _same_plan(run, other):
    for (name, c, bits), (name2, c2, bits2) in zip(_plan(run), _plan(other), strict=True):
        assert (name, bits) == (name2, bits2) and c == pytest.approx(c2, rel=1e-4)  # Hessian traces, shared out


@pytest.fixture(scope="module")
def one_device(float_model, folders, tmp_path_factory):
    run = tmp_path_factory.mktemp("dist") / "one"
    _finish(_tinyq(["quantize", float_model, "--data", folders / "labelled", *JOB, "--lr", "1e-2", "--out", run]))
    return run


@pytest.mark.slow
def test_mirrored_on_two_logical_devices_matches_one_device(one_device, float_model, folders, tmp_path):
    runs, said = [], []
    for name, lr in (("a", ["--lr", "1e-2"]), ("b", ["--lr", "5e-3", "--scale-lr"])):
        run = tmp_path / name
        _, err = _finish(_tinyq(["quantize", float_model, "--data", folders / "labelled", *JOB, *lr, "--distribute",
                                 "mirrored", "--out", run], env={"TINYQ_CPU_REPLICAS": "2"}))
        runs.append(run)
        said.append(err)
    assert "distribute: mirrored over 2 replicas" in said[0] and "8 per replica" in said[0]
    assert "learning rates x2 (--scale-lr)" in said[1]
    one, a, b = _losses(one_device), _losses(runs[0]), _losses(runs[1])
    assert a == b  # the same devices repeat a seeded run; half the rate times two replicas is the same rate
    assert one[-1] < 0.9 * one[0]  # the model learns
    # one device's losses within 3%: each replica's activation ranges follow its half of the batch, and the
    # sums are added in another order (the gradient's scale is checked exactly below)
    assert a == pytest.approx(one, rel=3e-2)
    _same_plan(runs[0], one_device)


@pytest.mark.slow
def test_two_workers_match_one_device(one_device, float_model, folders, tmp_path):
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("localhost", 0))
            ports.append(s.getsockname()[1])
    run = tmp_path / "cluster"
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
        procs.append(_tinyq(["quantize", float_model, "--data", folders / "labelled", *JOB, "--lr", "1e-2",
                             "--distribute", "multiworker", "--out", run], env={"TF_CONFIG": json.dumps(config)}))
    (chief_out, chief_err), (worker_out, _) = [_finish(p) for p in procs]
    assert "distribute: multiworker over 2 replicas" in chief_err
    assert worker_out.strip() == f"worker 1: done; the chief writes the run folder {run}"
    assert str(run) in chief_out and (run / "model.tflite").exists() and not (run / ".worker-1").exists()
    config = json.loads((run / "config.json").read_text())["train"]
    assert config["distribute"] == "multiworker"
    assert _losses(run) == pytest.approx(_losses(one_device), rel=3e-2)
    _same_plan(run, one_device)


@pytest.mark.slow
def test_from_scratch_float_phase_and_qat_mirrored(tmp_path):
    """The recipe trained from random weights: the float phase and QAT both on two replicas."""
    run = tmp_path / "scratch"
    _, err = _finish(_tinyq(["train", "person-detect", "--from-scratch", "--bits", "4", "--epochs", "1",
                             "--qat-epochs", "1", "--synthetic-images", "60", "--batch", "16", "--distribute",
                             "mirrored", "--out", run], env={"TINYQ_CPU_REPLICAS": "2"}))
    assert "distribute: mirrored over 2 replicas" in err and "8 per replica" in err
    history = json.loads((run / "history.json").read_text())
    assert len(history["float"]) == 1 and len(history["qat"]) == 1 and (run / "model.tflite").exists()


STEP = """
import sys
import numpy as np
from tinyq.pipeline.distribute import distribution
dist = distribution("mirrored" if sys.argv[1] == "2" else None)
from tinyq._tf import keras, tf
from tinyq.distill import Distiller
keras.utils.set_random_seed(0)
x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
y = np.array([0, 1] * 4)
with dist.scope():
    teacher = keras.Sequential([keras.layers.Dense(2, activation="softmax", input_shape=(4,))])
    student = keras.Sequential([keras.layers.Dense(2, activation="softmax", input_shape=(4,))])
    model = Distiller(student, teacher, 0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
before = student.get_weights()[0].copy()
model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0)
print(dist.replicas, np.abs(student.get_weights()[0] - before).sum(), *student.get_weights()[0].ravel())
"""


@pytest.mark.slow
def test_distillation_step_is_one_devices_step():
    """One distillation step on two replicas (half the batch each) moves the weights as one device's step."""
    steps = []
    for replicas in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", STEP, replicas], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "TINYQ_CPU_REPLICAS": replicas})
        assert done.returncode == 0, done.stderr[-800:]
        steps.append([float(v) for v in done.stdout.split()])
    assert steps[0][0] == 1 and steps[1][0] == 2 and steps[0][1] > 1e-3  # a real step
    assert steps[1][2:] == pytest.approx(steps[0][2:], abs=1e-6)


@pytest.mark.parametrize("args, env, says", [
    (["--distribute", "multiworker"], {"TF_CONFIG": ""}, "TF_CONFIG, which is not set"),
    (["--distribute", "multiworker"], {"TF_CONFIG": '{"cluster": {}}'}, "TF_CONFIG is not a cluster and task"),
    (["--distribute", "mirrored"], {"TINYQ_CPU_REPLICAS": "lots"}, "TINYQ_CPU_REPLICAS must be a number"),
    (["--scale-lr"], {}, "--scale-lr multiplies the learning rates"),
    (["--distribute", "mirrored", "--ptq", "tinyq", "--bits", "4"], {}, "--ptq tinyq does not train"),
])
def test_distribute_errors_come_first(float_model, tmp_path, monkeypatch, args, env, says):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    r = CliRunner().invoke(main, ["quantize", str(float_model), *args, "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and r.stderr.startswith("error: ") and says in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
