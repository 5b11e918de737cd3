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


DAMAGES = {
    "history.json not JSON": ("history.json", b"{\"float\": [", ("report",), "not valid JSON"),
    "history.json of the wrong shape": ("history.json", b"{\"float\": 3}", ("report",), "not a training history"),
    "config.json a list": ("config.json", b"[1, 2]", ("report", "convert", "check", "export"), "holds a JSON list"),
    "metrics.json a list": ("metrics.json", b"[]", ("report",), "holds a JSON list"),
    "config without its contract": ("config.json", None, ("report", "convert", "check", "export"), "no input contract"),
    "model.h5 truncated": ("model.h5", "cut", ("convert",), "cannot load"),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_run_folder_is_one_line_error(runs, folders, tmp_path, damage):
    import json
    import shutil

    from click.testing import CliRunner

    from tinyq.cli import main

    name, content, commands, message = DAMAGES[damage]
    run = tmp_path / "run"
    shutil.copytree(runs[8], run)
    path = run / name
    if content is None:  # the config without its contract
        config = json.loads(path.read_text())
        del config["contract"]
        path.write_text(json.dumps(config))
    elif content == "cut":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    else:
        path.write_bytes(content)
    args = {"report": ["report", run], "convert": ["convert", run, "--out", tmp_path / "again.tflite"],
            "check": ["check", run, "--data", folders / "labelled"], "export": ["export", run, "--out", tmp_path / "fw"]}
    for command in commands:
        r = CliRunner().invoke(main, [str(a) for a in args[command]])
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.exit_code == 1 and lines and lines[-1].startswith("error: ") and message in lines[-1], \
            (command, r.exit_code, r.stderr[-1500:], repr(r.exception))
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize("plan", ["missing", "binary", "folder", "other model"])
def test_a_bad_plan_fails_before_any_folder_or_data(tmp_path, plan):
    """It failed after the float phase, leaving a folder that then blocked the corrected command."""
    import json

    from click.testing import CliRunner

    from tinyq.cli import main

    path = tmp_path / "plan.json"
    if plan == "binary":
        path.write_bytes(bytes(range(256)))
    elif plan == "folder":
        path.mkdir()
    elif plan == "other model":
        path.write_text(json.dumps({"layers": [{"name": "conv_from_elsewhere", "bits": 2}]}))
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "person-detect", "--plan", str(path), "--data", str(tmp_path / "no-data"),
                                  "--out", str(out)])
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1].startswith("error: "), r.stderr
    assert {"missing": "does not exist", "binary": "not a tinyq plan", "folder": "is a folder",
            "other model": "does not fit this model"}[plan] in r.stderr
    assert not out.exists()  # checked before the data (which does not exist either) and before any folder


def test_an_impossible_budget_fails_before_any_folder_or_data(float_model, tmp_path):
    from click.testing import CliRunner

    from tinyq.cli import main

    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["quantize", str(float_model), "--size-budget", "100", "--data",
                                  str(tmp_path / "no-data"), "--out", str(out)])
    assert r.exit_code == 1 and "below this model's weights at their smallest" in r.stderr, r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_outputs_never_replace_special_files_and_leave_nothing_on_failure(runs, tmp_path):
    """--out naming a symlink or a FIFO was replaced by a regular file (as root, /dev/null would be);
    convert into a folder or onto a full disk left X.names.json and X.compaction.json behind."""
    import os

    from click.testing import CliRunner

    from tinyq.cli import main

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    target = tmp_path / "target.tflite"
    target.write_bytes(b"mine")
    link = tmp_path / "link.tflite"
    link.symlink_to(target)
    fifo = tmp_path / "fifo.tflite"
    os.mkfifo(fifo)
    for out, kind in ((link, "a symlink"), (fifo, "a device or special file")):
        r = invoke("convert", runs[8], "--out", out)
        assert r.exit_code == 1 and kind in r.stderr.strip().splitlines()[-1], r.stderr
    assert link.is_symlink() and target.read_bytes() == b"mine" and not fifo.is_file()
    r = invoke("export", runs[8], "--out", link)
    assert r.exit_code == 1 and "a symlink" in r.stderr
    folder = tmp_path / "folder.tflite"
    folder.mkdir()
    r = invoke("convert", runs[8], "--out", folder)
    assert r.exit_code == 1 and "is a folder" in r.stderr.strip().splitlines()[-1], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.tflite", "folder.tflite", "link.tflite", "target.tflite"]



def test_files_written_together_are_all_or_none(tmp_path):
    """A file and its sidecars (convert's X.names.json, X.compaction.json) go out together: when one cannot
    be written, none is, and no folder made for them stays."""
    from tinyq.errors import TinyqError
    from tinyq.runfolder import write_files

    blocked = tmp_path / "new" / "m.compaction.json"
    blocked.mkdir(parents=True)  # a folder where a file must go
    with pytest.raises(TinyqError, match="is a folder"):
        write_files({tmp_path / "new" / "deeper" / "m.tflite": b"model", tmp_path / "new" / "m.names.json": b"{}",
                     blocked: b"{}"})
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["new", "new/m.compaction.json"]
