"""A training process killed mid-run resumes from its last complete epoch with --resume,
and ends with the bytes of a run that was never interrupted."""
import json
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # trains, kills and resumes runs


TRAIN = [sys.executable, "-m", "tinyq.cli", "train", "person-detect", "--from-scratch", "--bits", "4", "--epochs", "3",
         "--qat-epochs", "2", "--synthetic-images", "200", "--batch", "32",
         "--method", "cpq"]  # cpq: its sampled levels and DropBits must resume too


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = subprocess.run(TRAIN + ["--out", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return (out / "model.tflite").read_bytes()


# Ctrl-C (SIGINT) stops training through the same handler as SIGTERM, with exit code 130
# (tests/test_interrupt.py): SIGTERM stands for both clean stops here
@pytest.mark.parametrize("sig, code, phase", [(signal.SIGKILL, -signal.SIGKILL, "float"),
                                              (signal.SIGTERM, 143, "float"),
                                              (signal.SIGKILL, -signal.SIGKILL, "qat")])
def test_resume_after_kill(tmp_path, uninterrupted, sig, code, phase):
    out = tmp_path / "run"
    cmd = TRAIN + ["--out", str(out)]
    when = "[float] epoch 2/3" if phase == "float" else "[qat] epoch 1/2"
    # a shell's background job (CI under nohup, `cmd &`) starts with SIGINT ignored, and Python keeps
    # it ignored; a terminal's Ctrl-C reaches a process whose SIGINT is the default
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    killed = False
    for line in proc.stderr:
        if when in line:
            # SIGKILL: no handler runs, like a crash or an out-of-memory kill; SIGTERM and SIGINT
            # (Ctrl-C) end cleanly with a message
            proc.send_signal(sig)
            killed = True
            break
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert killed, "training finished before it could be interrupted"
    assert proc.returncode == code, rest[-2000:]
    if sig != signal.SIGKILL:
        assert "interrupted;" in rest and "--resume" in rest and "Traceback" not in rest, rest[-2000:]
    assert not list(out.glob(".*.tmp*")) and not [p for p in out.iterdir() if p.name.startswith(".float.h5")]
    assert not (out / "model.tflite").exists()
    assert phase == "qat" or not (out / "float.h5").exists()

    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 1 and "--resume" in again.stderr  # never silently overwrites a run

    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    if phase == "float":
        assert "[float] epoch 1/3" not in resumed.stderr and "[float] epoch 3/3" in resumed.stderr, resumed.stderr
    else:
        assert "[float]" not in resumed.stderr and "[qat] epoch 2/2" in resumed.stderr, resumed.stderr
    history = json.loads((out / "history.json").read_text())
    assert [e["epoch"] for e in history["float"]] == [1, 2, 3]
    assert [e["epoch"] for e in history["qat"]] == [1, 2]
    # the same batches, augmentation, dropout and quantizer draws as a run never interrupted
    assert (out / "model.tflite").read_bytes() == uninterrupted
