"""Capture what C/C++ code writes to file descriptor 2 (TFLM, the converter, TF start-up)."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from typing import Iterator


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
