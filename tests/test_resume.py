"""A training process killed mid-run resumes from its last complete epoch with --resume."""
import json
import signal
import subprocess
import sys

import pytest


@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 143),
                                       (signal.SIGINT, 130)])
def test_resume_after_kill(tmp_path, sig, code):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tinyq.cli", "train", "person-detect", "--bits", "4", "--epochs", "3",
           "--qat-epochs", "1", "--synthetic-images", "200", "--batch", "32", "--out", str(out)]
    # a shell's background job (CI under nohup, `cmd &`) starts with SIGINT ignored, and Python keeps
    # it ignored; a terminal's Ctrl-C reaches a process whose SIGINT is the default
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    killed = False
    for line in proc.stderr:
        if "[float] epoch 2/3" in line:
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
    assert not (out / "model.tflite").exists() and not (out / "float.h5").exists()

    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 1 and "--resume" in again.stderr  # never silently overwrites a run

    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "[float] epoch 1/3" not in resumed.stderr and "[float] epoch 3/3" in resumed.stderr, resumed.stderr
    history = json.loads((out / "history.json").read_text())
    assert [e["epoch"] for e in history["float"]] == [1, 2, 3]
    assert [e["epoch"] for e in history["qat"]] == [1]
    assert (out / "model.tflite").is_file()
