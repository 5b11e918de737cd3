"""Where tinyq's progress goes: ``Log`` callables, stderr, and capturing what C/C++ code writes to fd 2."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from typing import Callable, Iterator

Log = Callable[[str], None]


def log_stderr(msg: str) -> None:
    """The command line's log: one line on stderr, at once."""
    print(msg, file=sys.stderr, flush=True)


def quiet(msg: str) -> None:
    """A log that drops everything (library calls without a log)."""


_bars = {"on": True}


def show_progress(on: bool) -> None:
    """Turn progress bars on or off for this process (``--quiet`` turns them off)."""
    _bars["on"] = on


def bar(total: int | None, desc: str, unit: str = "it"):
    """A progress bar with rate and ETA on stderr, drawn only on a terminal and removed when done;
    on a pipe or a CI log it draws nothing and the log lines stand alone. Use as a context manager
    and call ``.update(n)``."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=not (_bars["on"] and sys.stderr.isatty()))


@contextlib.contextmanager
def captured_fd2() -> Iterator[list[str]]:
    """Redirect fd 2 to a temp file; the yielded list receives its text on exit."""
    sys.stderr.flush()
    saved = os.dup(2)
    out: list[str] = []
    with tempfile.TemporaryFile() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))
