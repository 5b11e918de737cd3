"""A training process killed mid-run resumes from its last complete epoch with --resume."""
import json
import subprocess
import sys


def test_resume_after_kill(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tinyq.cli", "train", "person-detect", "--bits", "4", "--epochs", "3",
           "--qat-epochs", "1", "--synthetic-images", "200", "--batch", "32", "--out", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    killed = False
    for line in proc.stderr:
        if "[float] epoch 2/3" in line:
            proc.kill()  # SIGKILL: no handler runs, like a crash or an out-of-memory kill
            killed = True
            break
    proc.wait(timeout=60)
    assert killed, "training finished before it could be interrupted"
    assert not (out / "model.tflite").exists() and not (out / "float.h5").exists()

    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 1 and "--resume" in again.stderr  # never silently overwrites a run

    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "[float] epoch 1/3" not in resumed.stderr and "[float] epoch 3/3" in resumed.stderr
    history = json.loads((out / "history.json").read_text())
    assert [e["epoch"] for e in history["float"]] == [1, 2, 3]
    assert [e["epoch"] for e in history["qat"]] == [1]
    assert (out / "model.tflite").is_file()
