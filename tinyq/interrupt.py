"""Ctrl-C and SIGTERM during training stop at the next batch boundary, not wherever they land.

Python raises a signal's exception at whatever bytecode runs next. In a Keras fit that can be
inside TensorFlow's own Python callbacks under C++ (a checkpoint being written, a tf.data
iterator), and a process stopped there could die with SIGSEGV instead of ending cleanly
(tests/test_resume.py saw it once in three runs under load). While :func:`deferred` is active
a signal is only recorded; the callback of :func:`stop_at_batch_end_callback` raises it
between batches, and after the epoch's backup is written. A second signal raises at once: the user insists.
"""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C is, so the run unwinds the same way (temp files removed)."""


_pending: int | None = None
_deferring = False


def _raise(signum: int) -> None:
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def handler(signum, frame) -> None:
    """The SIGTERM (and, while deferring, SIGINT) handler."""
    global _pending
    if _deferring and _pending is None:
        _pending = signum
        return
    _raise(signum)


def check() -> None:
    """Raise the signal recorded while deferring, if any."""
    global _pending
    if _pending is not None:
        signum, _pending = _pending, None
        _raise(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Record SIGTERM and Ctrl-C instead of raising them (Ctrl-C only where Python handles it:
    a background job's ignored SIGINT stays ignored)."""
    global _deferring, _pending
    sigint = signal.getsignal(signal.SIGINT)
    if sigint is signal.default_int_handler:
        signal.signal(signal.SIGINT, handler)
    _deferring, _pending = True, None
    try:
        yield
    finally:
        _deferring = False
        if sigint is signal.default_int_handler:
            signal.signal(signal.SIGINT, sigint)
    check()  # a signal that came after the last batch


def stop_at_batch_end_callback():
    """A Keras callback raising a deferred signal after each batch and each epoch's callbacks."""
    from tinyq._tf import keras

    class StopAtBatchEnd(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            check()

        def on_test_batch_end(self, batch, logs=None):
            check()

        def on_epoch_end(self, epoch, logs=None):
            check()

    return StopAtBatchEnd()
