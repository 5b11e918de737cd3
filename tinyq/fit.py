"""The fit loop: one phase of training (float, QAT or a search) with a history line and a backup per
epoch, resumable, seeded; evaluation and calibration images."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from tinyq import interrupt, optim
from tinyq._tf import keras, tf
from tinyq.contract import InputContract
from tinyq.data import ImageSet
from tinyq.data.pipeline import dataset, epoch_seed
from tinyq.logs import Log, bar
from tinyq.errors import TinyqError
from tinyq.runfolder import Run, read_json, write_json


class EpochLog(keras.callbacks.Callback):
    """One line per epoch (phase, loss, accuracy, validation accuracy, time), recorded in history.json.

    Each finished epoch is written to ``RUN/history.json`` at once, keyed by epoch, so a
    resumed run keeps the epochs of the process that was interrupted. With ``agreement`` the
    labels are the teacher's top-1, and Keras' accuracy is recorded and shown as agreement.
    """

    def __init__(self, phase: str, epochs: int, log: Log, history_path: Path, agreement: bool = False) -> None:
        super().__init__()
        self.phase, self.epochs, self.log, self.path = phase, epochs, log, history_path
        self.measure = "agreement" if agreement else "accuracy"

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k.replace("accuracy", self.measure): float(v) for k, v in (logs or {}).items()}
        seconds = time.time() - self.t0
        history = read_history(self.path)
        epochs = {int(e["epoch"]): e for e in history.get(self.phase, [])}
        epochs[epoch + 1] = {"epoch": epoch + 1, **logs, "seconds": seconds}
        history[self.phase] = [epochs[k] for k in sorted(epochs)]
        write_json(self.path, history)
        short = "acc" if self.measure == "accuracy" else "agree"
        nan = float("nan")
        self.log(f"  [{self.phase}] epoch {epoch + 1}/{self.epochs}  loss {logs.get('loss', nan):.4f}  "
                 f"{short} {logs.get(self.measure, nan):.4f}  val_{short} {logs.get('val_' + self.measure, nan):.4f}  "
                 f"({seconds:.1f}s)")


class BatchBar(keras.callbacks.Callback):
    """A progress bar over each epoch's batches, with its ETA (on a terminal only: :func:`tinyq.logs.bar`)."""

    def __init__(self, phase: str, epochs: int, steps: int) -> None:
        super().__init__()
        self.phase, self.epochs, self.steps, self.shown = phase, epochs, steps, None

    def on_epoch_begin(self, epoch, logs=None):
        self.shown = bar(self.steps, f"[{self.phase}] epoch {epoch + 1}/{self.epochs}", "batch")

    def on_train_batch_end(self, batch, logs=None):
        self.shown.update(1)

    def on_epoch_end(self, epoch, logs=None):
        self.shown.close()


class EpochRandomness(keras.callbacks.Callback):
    """Re-seeds every random layer's generator (Dropout) from ``(seed, epoch, layer)`` as each epoch begins.

    Why: Keras leaves the generators' state out of checkpoints, so a resumed run would drop other
    units than the uninterrupted one; drawn per epoch, the draws do not depend on where a run started.
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        layers = [m for m in self.model.submodules if hasattr(getattr(m, "_random_generator", None), "_generator")]
        for i, layer in enumerate(layers):
            generator = layer._random_generator._generator
            if generator is not None:  # None: a stateless or legacy generator, nothing to re-seed
                generator.reset_from_seed(epoch_seed(self.seed, epoch) * 1000 + i)


def read_history(path: Path) -> dict[str, list[dict]]:
    """``{phase: [{"epoch": 1, "loss": ..., "seconds": ...}, ...]}``; empty before the first epoch."""
    history = read_json(path) if path.exists() else {}
    if not all(isinstance(v, list) and all(isinstance(e, dict) for e in v) for v in history.values()):
        raise TinyqError(f"{str(path)!r} is not a training history; the run folder is damaged, train again")
    return history


def fit_phase(model, splits, contract, epochs: int, lr: float, phase: str, run: Run, log: Log, *, batch: int,
              seed: int, teacher=None, distill: float = 0.0, unlabeled: bool = False, features: float = 0.0,
              folded=None, carried=(), callbacks=()) -> None:
    """Fit ``model`` (or distil ``teacher`` into it) with a per-epoch history and backup in ``run``.

    ``features``: weight of the feature term (:mod:`tinyq.distill`), matched against ``folded``
    (:attr:`tinyq.qat.QATModel.folded`); ``carried``: layers started from trained quantizers
    (:func:`method_callbacks`); ``callbacks``: more Keras callbacks, run before the backup's."""
    steps = max(1, -(-len(splits["train"]) // batch))
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, epochs * steps), alpha=0.05)
    optimizer = optim.Adam(schedule, relative=optim.step_variables(model))  # plain Adam for a float model
    if teacher is not None:
        from tinyq.distill import Distiller

        fitted = Distiller(model, teacher, distill, features=features, folded=folded)
        fitted.compile(optimizer=optimizer)
    else:
        fitted = model
        fitted.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    backup = run / f".backup_{phase}"
    # fit restores the epoch from the backup itself, but the batches must start there too;
    # with nothing left to run, one epoch's batches still go in, unread, so fit restores the weights
    first = min(resumed_epoch(backup), epochs - 1)
    train_ds = splits["train"].training_batches(contract, batch, seed, epochs, first)  # in memory, or streamed
    val_ds = dataset(splits["val"].x, splits["val"].y, contract, batch) if len(splits.get("val", ())) else None
    # across workers (--distribute multiworker) every worker reads the same stream and keeps its share of
    # each batch, so the batches are one device's whatever the files
    by_data = tf.data.Options()
    by_data.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_ds = train_ds.with_options(by_data)
    val_ds = val_ds.with_options(by_data) if val_ds is not None else None
    # history before the backup: an epoch killed between the two is re-run and its entry replaced
    callbacks = [BatchBar(phase, epochs, steps), EpochLog(phase, epochs, log, run.history_path, agreement=unlabeled),
                 keras.callbacks.BackupAndRestore(str(backup)),
                 EpochRandomness(seed), *method_callbacks(model, epochs, steps, carried), *callbacks,
                 interrupt.stop_at_batch_end_callback()]  # last: after the epoch's backup is written
    with interrupt.deferred():
        fitted.fit(train_ds, validation_data=val_ds, epochs=epochs, steps_per_epoch=steps, callbacks=callbacks,
                   verbose=0)
    shutil.rmtree(backup, ignore_errors=True)  # the phase is complete; Keras leaves the empty folder


def resumed_epoch(backup: Path) -> int:
    """The epoch ``keras.callbacks.BackupAndRestore`` resumes at from ``backup`` (0 without one)."""
    latest = tf.train.latest_checkpoint(str(backup / "chief"))
    if latest is None:
        return 0
    return int(tf.train.load_checkpoint(latest).get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE")) + 1


def evaluate_keras(model, data: ImageSet, contract: InputContract, batch: int = 128) -> np.ndarray:
    """Class probabilities of ``model`` on ``data``."""
    return model.predict(dataset(data.x, None, contract, batch), verbose=0)


def accuracy(model, data: ImageSet, contract: InputContract) -> float:
    return float((evaluate_keras(model, data, contract).argmax(1) == data.y).mean())


def calibration_images(splits, contract: InputContract, seed: int, n: int = 512) -> np.ndarray:
    """A seeded sample of ``n`` training images, model-ready, to set activation ranges before QAT."""
    return contract.to_float(splits["train"].sample(n, seed))


def method_callbacks(model, epochs: int, steps: int, carried=()) -> list:
    """Callbacks the model's quantizers need while training (warm-up, QGT's ramp), found by their variables.

    Layers in ``carried`` start from trained quantizers (:attr:`tinyq.qat.QATModel.carried`): they
    are quantized already and skip the warm-up, which would start them from their latent weights
    alone, a network nobody ran (measured in docs/results.md).
    """
    from tinyq.qat import quantized_layers
    from tinyq.quantizers.qgt import QGTRamp, WarmupRamp

    carried = set(carried)
    settled = {id(qvars["quant_ramp"]) for layer, _, _, qvars in quantized_layers(model) if layer.layer.name in carried}
    names = {v.name.split(":")[0] for v in model.variables if id(v) not in settled}
    return [cls(epochs, steps, skip=settled) for cls in (WarmupRamp, QGTRamp) if any(n.endswith(cls.suffix) for n in names)]
