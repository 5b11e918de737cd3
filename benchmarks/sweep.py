"""Run a benchmark's grid as independent jobs: several processes here, a share of the grid per machine.

A job is a picklable description and ``fn(job)`` runs it, returning its row; a job whose results
are already on disk returns them without training again (the benchmark's own resume), so an
interrupted sweep continues where it stopped. ``shard("i/n", jobs)`` keeps every n-th job from
the i-th, so n machines sharing the output folder run the grid once between them.
"""
from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed


def shard(spec: str | None, jobs: list) -> list:
    """The jobs of share ``spec`` ("i/n", 0 <= i < n) of the grid; all of them for None."""
    if not spec:
        return list(jobs)
    try:
        i, n = (int(v) for v in spec.split("/"))
    except ValueError:
        raise SystemExit(f"error: --shard takes i/n, e.g. 0/2 for the first of two machines; got {spec!r}") from None
    if not 0 <= i < n:
        raise SystemExit(f"error: --shard {spec}: i must lie in 0..n-1")
    return list(jobs)[i::n]


def _threads(n: int) -> None:
    """Each worker's TensorFlow uses its share of the cores, set before it starts."""
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(n)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"


def _call(fn, job):
    t0 = time.time()
    try:
        return fn(job), None, time.time() - t0
    except Exception as e:  # one failed job is reported, the sweep goes on
        return None, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}", time.time() - t0


def run(fn, jobs: list, workers: int = 1, log=print) -> list:
    """``[fn(job) for job in jobs]``, on ``workers`` processes (spawned: each imports TensorFlow afresh);
    a failed job gives None and a log line; results in the jobs' order."""
    results: list = [None] * len(jobs)
    if workers <= 1:
        for k, job in enumerate(jobs):
            results[k], error, seconds = _call(fn, job)
            log(f"sweep: job {k + 1}/{len(jobs)} {job!r}: {'failed: ' + error if error else 'done'} ({seconds:.0f}s)")
        return results
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_threads,
                               initargs=(threads,))
    with pool:
        futures = {pool.submit(_call, fn, job): k for k, job in enumerate(jobs)}
        for done, future in enumerate(as_completed(futures), 1):
            k = futures[future]
            results[k], error, seconds = future.result()
            log(f"sweep: {done}/{len(jobs)} finished, job {jobs[k]!r}: {'failed: ' + error if error else 'done'} "
                f"({seconds:.0f}s)")
    return results
