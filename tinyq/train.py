"""The fit loop: a float phase, then QAT; a backup every epoch, ``resume``, seeded runs."""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tinyq import __version__, interrupt, optim
from tinyq._tf import keras, tf
from tinyq.contract import InputContract
from tinyq.data import ImageSet, load_splits, synthetic_splits
from tinyq.data.pipeline import dataset, epoch_seed, training_batches
from tinyq.errors import TinyqError
from tinyq.learnbits import learn_plan
from tinyq.plan import KEEP_CHOICES, chooser, default_plan, describe_plan, plan_from_file
from tinyq.qat import diagnostics, load_model, quantize_model
from tinyq.quantizers import method_callbacks
from tinyq.runfolder import FORMAT_VERSION, Run, atomic_path, write_json
from tinyq.spec import QuantSpec

Log = Callable[[str], None]


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TrainConfig:
    recipe: str = "person-detect"
    bits: int = 8
    method: str = "ste"
    act_bits: int = 8
    keep_8bit: tuple[str, ...] = KEEP_CHOICES
    data: str | None = None
    channels: int = 3
    epochs: int = 10
    qat_epochs: int = 5
    batch: int = 64
    lr: float = 1e-2
    qat_lr: float = 5e-4
    seed: int = 0
    synthetic_images: int = 3000
    limit: int | None = None  # images per split folder (seeded sample), for quick runs
    init: str | None = None  # a float model (.h5) to start QAT from, instead of the float phase
    learn_bits: bool = False  # search per-layer widths up to --bits before QAT (tinyq.learnbits)
    size_budget: int | None = None  # file bytes; per-layer widths by the knapsack (tinyq.mixed.budget)
    plan: str | None = None  # a plan file to follow (tinyq plan --out)

    def __post_init__(self) -> None:
        validate_quant(self.method, self.bits, self.act_bits, self.learn_bits, self.size_budget, self.plan)
        if self.epochs < 0 or self.qat_epochs < 0 or (self.epochs == 0 and self.qat_epochs == 0):
            raise TinyqError("--epochs and --qat-epochs must be >= 0 and not both 0")
        if self.batch < 1:
            raise TinyqError(f"--batch must be at least 1; got {self.batch}")


def validate_quant(method: str, bits: int, act_bits: int, learn_bits: bool, size_budget: int | None = None,
                   plan: str | None = None) -> None:
    """Fail early, before any data is read, on options no layer could take."""
    QuantSpec(method=method, weight_bits=bits, act_bits=act_bits, learn_bits=learn_bits)
    chosen = [o for o, on in (("--learn-bits", learn_bits), ("--size-budget", size_budget), ("--plan", plan)) if on]
    if len(chosen) > 1:
        raise TinyqError(f"{' and '.join(chosen)} each choose the per-layer widths: pass one of them")
    if size_budget is not None and size_budget <= 0:
        raise TinyqError(f"--size-budget must be a positive size such as 64KB; got {size_budget}")
    if learn_bits and bits <= 2:
        raise TinyqError("--learn-bits with --bits 2 has nothing to learn: --bits is the most a layer may keep; "
                         "pass --bits 4 or 8")
    if size_budget is not None:
        from tinyq.mixed.budget import require_choice

        require_choice(bits)


class EpochLog(keras.callbacks.Callback):
    """One line per epoch (phase, loss, accuracy, validation accuracy, time), recorded in history.json.

    Each finished epoch is written to ``RUN/history.json`` at once, keyed by epoch, so a
    resumed run keeps the epochs of the process that was interrupted.
    """

    def __init__(self, phase: str, epochs: int, log: Log, history_path: Path) -> None:
        super().__init__()
        self.phase, self.epochs, self.log, self.path = phase, epochs, log, history_path

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        seconds = time.time() - self.t0
        history = read_history(self.path)
        epochs = {int(e["epoch"]): e for e in history.get(self.phase, [])}
        epochs[epoch + 1] = {"epoch": epoch + 1, **logs, "seconds": seconds}
        history[self.phase] = [epochs[k] for k in sorted(epochs)]
        write_json(self.path, history)
        self.log(f"  [{self.phase}] epoch {epoch + 1}/{self.epochs}  loss {logs.get('loss', float('nan')):.4f}  "
                 f"acc {logs.get('accuracy', float('nan')):.4f}  val_acc {logs.get('val_accuracy', float('nan')):.4f}  "
                 f"({seconds:.1f}s)")


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
    return json.loads(path.read_text()) if path.exists() else {}


def load_data(config: TrainConfig, contract: InputContract, log: Log) -> dict[str, ImageSet]:
    if config.data is None:
        log(f"data: SYNTHETIC default ({config.synthetic_images} procedurally drawn figures, seed {config.seed}). "
            "It teaches the pipeline, not real people: pass --data DIR (person/ + non_person/) for a real detector.")
        return synthetic_splits(config.synthetic_images, contract.resolution, contract.channels, config.seed)
    t0 = time.time()
    splits = load_splits(config.data, contract.resolution, contract.channels, config.seed, config.limit)
    for name, part in splits.items():
        skipped = f", {part.skipped_note()}" if part.skipped else ""
        log(f"data: {name}: {len(part)} images {part.counts()}{skipped}")
    log(f"data: loaded in {time.time() - t0:.1f}s from {config.data}")
    return splits


def fit_phase(model, splits, contract, epochs: int, lr: float, phase: str, run: Run, log: Log, *, batch: int,
         seed: int, teacher=None, distill: float = 0.0, unlabeled: bool = False, features: float = 0.0) -> None:
    """Fit ``model`` (or distil ``teacher`` into it) with a per-epoch history and backup in ``run``.

    ``features``: weight of the feature term (:mod:`tinyq.distill`; needs a model from
    :func:`tinyq.qat.quantize_model`)."""
    steps = max(1, -(-len(splits["train"]) // batch))
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, epochs * steps), alpha=0.05)
    optimizer = optim.Adam(schedule, relative=optim.step_variables(model))  # plain Adam for a float model
    if teacher is not None:
        from tinyq.distill import Distiller
        from tinyq.qat import folded_model

        fitted = Distiller(model, teacher, distill, features=features, folded=folded_model(model))
        fitted.compile(optimizer=optimizer)
    else:
        fitted = model
        fitted.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    backup = run / f".backup_{phase}"
    # fit restores the epoch from the backup itself, but the batches must start there too;
    # with nothing left to run, one epoch's batches still go in, unread, so fit restores the weights
    first = min(resumed_epoch(backup), epochs - 1)
    train_ds = training_batches(splits["train"].x, splits["train"].y, contract, batch, seed, epochs, first)
    val_ds = dataset(splits["val"].x, splits["val"].y, contract, batch) if len(splits.get("val", ())) else None
    # history before the backup: an epoch killed between the two is re-run and its entry replaced
    callbacks = [EpochLog(phase, epochs, log, run.history_path), keras.callbacks.BackupAndRestore(str(backup)),
                 EpochRandomness(seed), *method_callbacks(model, epochs, steps),
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


def _accuracy(model, data: ImageSet, contract: InputContract) -> float:
    return float((evaluate_keras(model, data, contract).argmax(1) == data.y).mean())


def _load_init(path: str, contract: InputContract):
    p = Path(path)
    if p.is_dir() and (p / "float.h5").exists():
        p = p / "float.h5"
    if not p.exists():
        raise TinyqError(f"--init {path!r} does not exist; give a float .h5 or a run folder holding float.h5")
    model = load_model(p)
    if tuple(model.input_shape[1:]) != contract.shape:
        raise TinyqError(f"--init model takes input {tuple(model.input_shape[1:])}, the recipe {contract.shape}")
    return model


def prepare_run(run: Run, record: dict, resume: bool) -> None:
    """Refuse to overwrite a run, or to resume one with other settings."""
    if run.config_path.exists():
        old = run.config()
        if not resume:
            raise TinyqError(f"{str(run.path)!r} already holds a run; pass --resume to continue it or choose another --out")
        if old.get("train") != record["train"]:
            raise TinyqError(f"--resume with different settings than {str(run.path)!r} was started with; "
                             "resume with the same flags or choose another --out")


def train(config: TrainConfig, out: str | Path, resume: bool = False, log: Log = log_stderr) -> Run:
    """Train ``config.recipe`` into the run folder ``out``; returns the run."""
    from tinyq import recipes

    recipe = recipes.get(config.recipe)
    contract = recipe.contract(config.channels)
    run = Run(out)
    record = {"format_version": FORMAT_VERSION, "tinyq_version": __version__, "kind": "train",
              "train": {**asdict(config), "keep_8bit": list(config.keep_8bit)}, "contract": contract.to_dict()}
    prepare_run(run, record, resume)
    splits = load_data(config, contract, log)  # before creating anything: bad data leaves no folder
    run.path.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    if resume and run.float_model.exists():
        log(f"float: resuming from {run.float_model}")
        float_model = load_model(run.float_model)
    elif config.init:
        float_model = _load_init(config.init, contract)
        log(f"float: starting QAT from {config.init} (no float phase)")
        write_json(run.config_path, record)
        with atomic_path(run.float_model) as tmp:
            float_model.save(tmp)
    else:
        float_model = recipe.model(config.channels)
        write_json(run.config_path, record)
        if config.epochs:
            log(f"float training: {config.epochs} epochs, {len(splits['train'])} images")
            fit_phase(float_model, splits, contract, config.epochs, config.lr, "float", run, log,
                 batch=config.batch, seed=config.seed)
        with atomic_path(run.float_model) as tmp:
            float_model.save(tmp)

    plan = choose_plan(float_model, splits, contract, run, log, bits=config.bits, method=config.method,
                       act_bits=config.act_bits, keep_8bit=config.keep_8bit, size_budget=config.size_budget,
                       plan_file=config.plan, learn_bits=config.learn_bits, lr=config.qat_lr, batch=config.batch,
                       seed=config.seed)
    record["plan"] = {name: spec.to_dict() for name, spec in plan.items()}
    write_json(run.config_path, record)
    qat = qat_phase(float_model, plan, splits, contract, run, log, epochs=config.qat_epochs, lr=config.qat_lr,
                    batch=config.batch, seed=config.seed,
                    what=describe_plan(config.bits, config.act_bits, config.method, config.keep_8bit,
                                      chooser(config.learn_bits, config.size_budget, config.plan)))
    return finish(run, qat, splits, contract, config.data or "synthetic", log, float_model=float_model)


def choose_plan(float_model, splits, contract: InputContract, run: Run, log: Log, *, bits: int, method: str,
                act_bits: int, keep_8bit, size_budget: int | None = None, plan_file: str | None = None,
                learn_bits: bool = False, **search) -> dict[str, QuantSpec]:
    """The per-layer plan QAT follows: from ``plan_file``, under ``size_budget``, learned, or the default.

    ``search``: how ``--learn-bits`` trains (lr, batch, seed, teacher, distill, unlabeled, keep_float).
    """
    if plan_file:
        log(f"plan: following {plan_file}")
        return plan_from_file(plan_file, float_model, method, act_bits)
    if size_budget:
        from tinyq.mixed.budget import budget_plan

        saved = run / "plan.json"
        if saved.exists():
            log(f"plan: reusing {saved}")
            return plan_from_file(saved, float_model, method, act_bits)
        log(f"plan: every weight layer chooses 2, 4 or 8 bits (at most {bits}) within {size_budget:,} bytes; "
            "--keep-8bit does not apply")
        chosen = budget_plan(float_model, splits, contract, size_budget, method=method, act_bits=act_bits,
                             max_bits=bits, seed=search.get("seed", 0), log=log)
        log(chosen.table())
        write_json(saved, chosen.to_dict())
        return chosen.specs(method, act_bits)
    plan = default_plan(float_model, bits, method, keep_8bit, act_bits)
    if learn_bits:
        plan = learn_plan(float_model, plan, splits, contract, run, log, **search)
    return plan


def calibration_images(splits, contract: InputContract, seed: int, n: int = 512) -> np.ndarray:
    """A seeded sample of ``n`` training images, model-ready, to set activation ranges before QAT."""
    x = splits["train"].x
    return contract.to_float(x[np.random.default_rng(seed).permutation(len(x))[:n]])


def qat_phase(float_model, plan, splits, contract, run: Run, log: Log, *, epochs: int, lr: float, batch: int,
              seed: int, what: str, teacher=None, distill: float = 0.0, unlabeled: bool = False,
              keep_float: tuple[str, ...] | list[str] = (), features: float = 0.0, start=None,
              teacher_name: str = "the float model"):
    """Quantize ``float_model`` by ``plan``, calibrate (or ``start`` from trained quantizers:
    :func:`tinyq.qat.start_from`), fine-tune; saves ``RUN/model.h5``."""
    qat = quantize_model(float_model, plan, calibration=calibration_images(splits, contract, seed),
                         keep_float=keep_float, start=start)
    if qat.carried:
        log(f"start: the trained grids and clips of {', '.join(qat.carried)}")
    if qat.restarted:
        log(f"warning: {', '.join(qat.restarted)}: the trained grid does not survive batch-norm folding "
            "(SAT's tanh clamp, or a per-tensor scale under per-channel BN); started from the calibrated grid")
    dropped = getattr(qat, "dropped_channels", {})
    if dropped:
        run.update_metrics(dropped_channels=dropped)
        log(f"dead channels dropped (zero weights, ReLU output 0; outputs unchanged): {sum(dropped.values())} in "
            + ", ".join(f"{name} {n}" for name, n in dropped.items()))
    if len(splits.get("val", ())):
        val = splits["val"]
        start = {"float_val_accuracy": _accuracy(float_model, val, contract),
                 "qat_step0_val_accuracy": _accuracy(qat, val, contract)}
        run.update_metrics(**start)
        log(f"val accuracy{' (agreement with the teacher)' if unlabeled else ''}: float "
            f"{start['float_val_accuracy']:.4f}; quantized before QAT (BN folded, ranges calibrated) "
            f"{start['qat_step0_val_accuracy']:.4f}")
    if epochs:
        log(f"QAT: {epochs} epochs, {what}" + (
            f"; distilled from {teacher_name} (weight {distill}"
            + (f", features {features})" if features else ")") if teacher is not None else ""))
        fit_phase(qat, splits, contract, epochs, lr, "qat", run, log, batch=batch, seed=seed, teacher=teacher,
             distill=distill, unlabeled=unlabeled, features=features)
    with atomic_path(run.model) as tmp:
        qat.save(tmp)
    return qat


def finish(run: Run, qat, splits, contract, data_name: str, log: Log, float_model=None) -> Run:
    """Held-out accuracy in Keras, conversion to ``model.tflite``, its accuracy in TFLM, the report.

    ``qat`` is None for the converter's PTQ (no Keras quantized model); ``float_model`` adds
    the float original's accuracy on the same images.
    """
    from tinyq.check import confusion, tflm_predictions
    from tinyq.convert import convert_run
    from tinyq.mixed.budget import check_trained_file

    metrics = {"data": data_name}
    if qat is not None:
        metrics["diagnostics"] = diagnostics(qat)
    for split in ("val", "test"):
        if len(splits.get(split, ())):
            for prefix, model in (("keras", qat), ("float", float_model)):
                if model is not None:
                    metrics[f"{prefix}_{split}_accuracy"] = _accuracy(model, splits[split], contract)
            metrics[f"keras_{split}_n"] = len(splits[split])
    run.update_metrics(**metrics)
    log("  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith("accuracy")))
    convert_run(run, representative=splits["train"].x, log=log)
    check_trained_file(run, log)
    test = splits.get("test", ())
    if len(test):
        log(f"TFLM: running model.tflite on {len(test)} test images ...")
        pred = tflm_predictions(run.tflite.read_bytes(), test, contract)
        run.update_metrics(tflm_test_accuracy=float((pred == test.y).mean()), test_n=len(test),
                           tflm_test_confusion=confusion(test.y, pred, len(contract.labels)))
    from tinyq.report import write_report

    write_report(run.path)
    log(f"report: {run / 'report.md'} (tinyq report RUN --data DIR measures it on other images too)")
    return run
