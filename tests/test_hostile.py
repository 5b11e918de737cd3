"""Hostile and degenerate inputs (issue 30): no signal, no traceback, one error line."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import QUICK, battery


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


def test_a_killed_write_leaves_no_file_and_the_next_write_removes_its_temp(tmp_path):
    """kill -9 runs no cleanup: the half-written temporary stays hidden beside the target, the
    target is untouched, and the next write of that file removes the dead process's temporary."""
    import signal

    from tinyq.runfolder import TMP_MARK, write_bytes

    target = tmp_path / "fw" / "model_data.cc"
    target.parent.mkdir()
    target.write_bytes(b"the old file")
    child = ("import os, signal, sys\nfrom tinyq.runfolder import atomic_path\n"
             "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half')\n"
             "    os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", child, str(target)])
    assert r.returncode == -signal.SIGKILL
    left = list(target.parent.glob(f".*{TMP_MARK}*"))
    assert len(left) == 1 and target.read_bytes() == b"the old file"
    write_bytes(target, b"the new file")
    assert target.read_bytes() == b"the new file"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model_data.cc"]


# every bounded option of every command, and values outside its bounds (issue 30, class 5)
def _numbers(lo=None, hi=None):
    """Integers and floats below ``lo`` or above ``hi``, and the non-numbers."""
    from hypothesis import strategies as st

    parts = [st.sampled_from(["nan", "inf", "-inf", "", "1e999", "x", "1,2"])]
    if lo is not None:
        parts += [st.integers(max_value=lo - 1).map(str), st.floats(max_value=lo, exclude_max=True).map(repr)]
    if hi is not None:
        parts += [st.integers(min_value=hi + 1).map(str), st.floats(min_value=hi, exclude_min=True).map(repr)]
    return st.one_of(*parts)


def _bounded():
    from hypothesis import strategies as st

    bits = _numbers(2, 8).filter(lambda v: v not in ("2.0", "8.0"))
    pairs = st.tuples(st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True, allow_infinity=True))
    value_range = pairs.filter(lambda p: not (p[0] < p[1] and all(map(math.isfinite, p)))).map(
        lambda p: f"{p[0]!r},{p[1]!r}")
    return {
        ("train", "--bits"): bits, ("train", "--act-bits"): bits, ("quantize", "--bits"): bits,
        ("train", "--seed"): _numbers(0, 2 ** 32 - 1), ("quantize", "--seed"): _numbers(0, 2 ** 32 - 1),
        ("train", "--limit"): _numbers(1), ("quantize", "--limit"): _numbers(1), ("check", "--limit"): _numbers(1),
        ("train", "--synthetic-images"): _numbers(30), ("quantize", "--synthetic-images"): _numbers(30),
        ("train", "--batch"): _numbers(1), ("quantize", "--batch"): _numbers(1),
        ("train", "--qat-epochs"): _numbers(0), ("quantize", "--epochs"): _numbers(0),
        ("train", "--qat-lr"): _numbers(0).filter(lambda v: v not in ("0", "-0.0")) | st.just("0"),
        ("quantize", "--lr"): _numbers(0) | st.just("0"),
        ("quantize", "--distill"): _numbers(0, 1), ("quantize", "--distill-features"): _numbers(0),
        ("quantize", "--value-range"): value_range,
        ("train", "--size-budget"): st.one_of(st.integers(min_value=(1 << 30) + 1).map(str),
                                              st.text(max_size=12).filter(lambda t: not t.strip().isdigit())),
    }


import math  # noqa: E402


@pytest.mark.parametrize("command, option", sorted(_bounded()))
def test_out_of_range_options_are_one_line_errors_with_nothing_written(tmp_path, command, option):
    """Hypothesis draws values outside each option's bounds: a one-line ``error:``, exit 1 or 2, no
    traceback, and no run folder."""
    from click.testing import CliRunner
    from hypothesis import HealthCheck, given, settings

    from tinyq.cli import main

    model = tmp_path / "m.h5"
    model.write_bytes(b"\x89HDF\r\n\x1a\n")  # exists; never read, the option fails first
    head = {"train": ["train", "person-detect"], "quantize": ["quantize", str(model)],
            "check": ["check", str(model), "--data", str(tmp_path)]}[command]

    @settings(max_examples=battery(25), deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_bounded()[(command, option)])
    def one(value):
        out = tmp_path / "run"
        r = CliRunner().invoke(main, [*head, option, value, *(["--out", str(out)] if command != "check" else [])])
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.exit_code in (1, 2), (value, r.exit_code, r.stderr[-500:], repr(r.exception))
        assert r.exception is None or isinstance(r.exception, SystemExit), (value, repr(r.exception))
        assert len(lines) == 1 and lines[0].startswith("error: "), (value, r.stderr[-500:])
        assert not out.exists()

    one()


def _json_values():
    from hypothesis import strategies as st

    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                              max_size=3), max_leaves=8)


def _folder_damage():
    """(file, damage): a run folder file replaced by other JSON, cut, overwritten with noise or deleted."""
    from hypothesis import strategies as st

    files = st.sampled_from(["config.json", "metrics.json", "history.json", "model.h5", "float.h5",
                             "representative.npy"])
    damage = st.one_of(st.tuples(st.just("json"), _json_values()), st.tuples(st.just("cut"), st.floats(0, 0.99)),
                       st.tuples(st.just("noise"), st.binary(max_size=64)), st.tuples(st.just("delete"), st.none()))
    return st.tuples(files, damage)


@pytest.mark.slow
def test_damaged_run_folders_never_give_a_traceback(runs, folders, tmp_path):
    """Hypothesis damages one file of a real run folder; report, convert, check and export each
    succeed or give one ``error:`` line, never a traceback or another exception."""
    import json
    import shutil

    from click.testing import CliRunner
    from hypothesis import HealthCheck, given, settings

    from tinyq.cli import main

    @settings(max_examples=battery(6), deadline=None, derandomize=True, phases=QUICK,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_folder_damage())
    def one(case):
        name, (kind, value) = case
        run = tmp_path / "run"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(runs[8], run)
        path = run / name
        if kind == "json":
            path.write_text(json.dumps(value))
        elif kind == "cut":
            path.write_bytes(path.read_bytes()[: int(value * path.stat().st_size)])
        elif kind == "noise":
            path.write_bytes(value)
        else:
            path.unlink()
        for args in (["report", run], ["convert", run, "--out", tmp_path / "again.tflite"],
                     ["check", run, "--data", folders / "labelled", "--limit", 8], ["export", run, "--out", tmp_path / "fw"]):
            r = CliRunner().invoke(main, [str(a) for a in args])
            lines = [line for line in r.stderr.splitlines() if line.strip()]
            assert r.exception is None or isinstance(r.exception, SystemExit), (case, args[0], repr(r.exception))
            assert "Traceback" not in r.stderr
            assert r.exit_code == 0 or (r.exit_code == 1 and lines[-1].startswith("error: ")), \
                (case, args[0], r.exit_code, r.stderr[-800:])
        shutil.rmtree(tmp_path / "fw", ignore_errors=True)
        (tmp_path / "again.tflite").unlink(missing_ok=True)

    one()
