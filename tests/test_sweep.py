"""benchmarks/sweep.py and bench_methods --workers / --shard: a grid of runs as independent jobs, resumed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
import sweep  # noqa: E402


def test_shards_split_the_grid_once():
    jobs = list(range(10))
    parts = [sweep.shard(f"{i}/3", jobs) for i in range(3)]
    assert parts[1] == [1, 4, 7] and sorted(sum(parts, [])) == jobs
    assert sweep.shard(None, jobs) == jobs
    with pytest.raises(SystemExit, match="--shard takes i/n"):
        sweep.shard("half", jobs)
    with pytest.raises(SystemExit, match="i must lie in 0..n-1"):
        sweep.shard("3/3", jobs)


def _fails_on_two(job):
    if job == 2:
        raise ValueError("no")
    return job * 10


def test_a_failed_job_is_reported_and_the_rest_run():
    said = []
    assert sweep.run(_fails_on_two, [1, 2, 3], workers=1, log=said.append) == [10, None, 30]
    assert "failed: ValueError: no" in said[1] and said[2].endswith("done (0s)")


@pytest.mark.slow
def test_methods_grid_on_two_workers_then_resumed(float_model, folders, tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, str(BENCH / "bench_methods.py"), "--model", str(float_model), "--data",
           str(folders / "labelled"), "--vww", str(folders / "labelled"), "--methods", "ste,daq", "--bits", "4",
           "--seeds", "0", "--epochs", "1", "--skip-baselines", "--skip-step-times", "--workers", "2", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-1500:]
    assert done.stderr.count("finished, job") == 2 and "failed" not in done.stderr
    rows = json.loads((out / "rows.json").read_text())
    assert sorted(r["method"] for r in rows) == ["daq", "ste"] and all(r["file_bytes"] > 0 for r in rows)
    files = sorted(out.glob("w4-*-s0/model.tflite"))
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)  # resumed: measured, not trained
    assert again.returncode == 0, again.stderr[-1500:]
    assert [f.stat().st_mtime_ns for f in files] == stamps and "QAT:" not in again.stderr
    assert json.loads((out / "rows.json").read_text()) == rows
