"""SIGTERM and Ctrl-C during training are raised between batches, never inside TensorFlow."""
import os
import signal

import numpy as np
import pytest

from tinyq import interrupt
from tinyq._tf import keras


@pytest.fixture
def sigterm_handler():
    """SIGTERM as the CLI sets it, SIGINT as in a foreground terminal (a background job started
    without job control, like ``nohup .ci/run &``, inherits SIGINT ignored)."""
    old = signal.signal(signal.SIGTERM, interrupt.handler)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGTERM, old)
    signal.signal(signal.SIGINT, old_int)


def test_outside_training_a_signal_raises_at_once(sigterm_handler):
    with pytest.raises(interrupt.Terminated):
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("the signal should have raised")


@pytest.mark.parametrize("signum, error", [(signal.SIGTERM, interrupt.Terminated), (signal.SIGINT, KeyboardInterrupt)])
def test_while_deferred_a_signal_waits_for_check(sigterm_handler, signum, error):
    reached = False
    with pytest.raises(error):
        with interrupt.deferred():
            os.kill(os.getpid(), signum)
            reached = True  # still running: the signal is only recorded
            interrupt.check()
    assert reached


def test_an_ignored_ctrl_c_stays_ignored(sigterm_handler):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with interrupt.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        interrupt.check()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_second_signal_raises_at_once(sigterm_handler):
    with pytest.raises(interrupt.Terminated):
        with interrupt.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            pytest.fail("the second signal should have raised")


def test_fit_stops_after_the_batch_the_signal_came_in(sigterm_handler):
    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    seen = []

    class Kill(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(batch)
            if batch == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    x = np.zeros((64, 4), np.float32)
    with pytest.raises(interrupt.Terminated):
        with interrupt.deferred():
            model.fit(x, x[:, :1], batch_size=8, epochs=1, verbose=0,
                      callbacks=[Kill(), interrupt.stop_at_batch_end_callback()])
    assert seen == [0, 1, 2]  # batch 2 finished, batch 3 never began
