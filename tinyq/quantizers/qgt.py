"""``qgt``: Quantization Guided Training (Ghamari et al. 2021, arXiv 2103.06231).

``L = L_task + lambda(t) * sum_l mean_w r(w; s_l, b_l)`` with ``r`` the smooth distance to
the grid (:func:`tinyq.quantizers.base.grid_distance`). The regulariser lives in
:class:`~tinyq.quantizers.base.WeightQuantizer` (any method takes it: ``qgt+daq``); ``qgt``
alone is ``qgt+ste``. Chosen where the summary leaves it open: the forward pass is the
method's fake quantization (the training graph is the deployed graph, no float-to-grid gap at
the end), ``r`` is a per-layer mean in grid steps (layers weigh alike whatever their weight
magnitude), and ``lambda(t)`` ramps linearly from 0 to ``QGT_LAMBDA`` over the first
``RAMP`` of training, then holds.
"""
from __future__ import annotations

from tinyq._tf import keras

QGT_LAMBDA = 1.0
RAMP = 0.5
WARMUP = 0.3


class Ramp(keras.callbacks.Callback):
    """Sets every variable named ``*<suffix>`` to ``min(1, progress / fraction)`` before each batch.

    Progress comes from the epoch and batch index, so a resumed run continues the ramp.
    Variables whose ``id`` is in ``skip`` are left alone.
    """

    suffix = ""

    def __init__(self, epochs: int, steps: int, fraction: float, skip=frozenset()) -> None:
        super().__init__()
        self.epochs, self.steps, self.ramp, self.skip = epochs, steps, fraction, frozenset(skip)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.ramps = [v for v in self.model.variables
                      if v.name.split(":")[0].endswith(self.suffix) and id(v) not in self.skip]

    def on_train_batch_begin(self, batch, logs=None):
        progress = (self.epoch * self.steps + batch) / max(1, self.epochs * self.steps)
        value = min(1.0, progress / self.ramp)
        for v in self.ramps:
            v.assign(value)

    def on_train_end(self, logs=None):
        for v in getattr(self, "ramps", []):
            v.assign(1.0)


class QGTRamp(Ramp):
    """QGT's lambda(t): 0 -> 1 over the first ``RAMP`` of training."""

    suffix = "qgt_ramp"

    def __init__(self, epochs: int, steps: int, skip=frozenset()) -> None:
        super().__init__(epochs, steps, RAMP, skip)


class WarmupRamp(Ramp):
    """Quantization warm-up: weights move from float to quantized over the first ``WARMUP`` of QAT.

    Why: at 2 bits the quantized copy of a trained network can start with a constant output, and
    training from there escapes only sometimes. Blending keeps the network working while it adapts.
    """

    suffix = "quant_ramp"

    def __init__(self, epochs: int, steps: int, skip=frozenset()) -> None:
        super().__init__(epochs, steps, WARMUP, skip)
