"""The stages a run goes through, shared by ``train`` and ``quantize``: the run folder, the data,
the per-layer plan, QAT, and the finish (held-out accuracy, conversion, TFLM, the report)."""
from __future__ import annotations

import time
from pathlib import Path

from tinyq.contract import InputContract
from tinyq.data import ImageSet, load_splits, synthetic_splits
from tinyq.data.shards import is_shards, load_shard_splits
from tinyq.errors import TinyqError
from tinyq.fit import accuracy, calibration_images, fit_phase
from tinyq.logs import Log
from tinyq.mixed.learnbits import learn_plan
from tinyq.plan import default_plan, plan_from_file
from tinyq.qat import build_qat, diagnostics, load_model
from tinyq.runfolder import Run, atomic_path, require_writable, write_json
from tinyq.spec import QuantSpec


def prepare_run(run: Run, record: dict, resume: bool) -> None:
    """Refuse to overwrite a run, to resume one with other settings, or a folder tinyq could not write."""
    require_writable(run.path)
    if run.path.exists() and not run.path.is_dir():
        raise TinyqError(f"--out {str(run.path)!r} is a file; a run is a folder: choose another --out")
    if run.config_path.exists():
        old = run.config()
        if not resume:
            raise TinyqError(f"{str(run.path)!r} already holds a run; pass --resume to continue it or choose another --out")
        if old.get("train") != record["train"]:
            raise TinyqError(f"--resume with different settings than {str(run.path)!r} was started with; "
                             "resume with the same flags or choose another --out")


def make_run_folder(run: Run) -> None:
    """The run folder, made once its inputs are valid."""
    try:
        run.path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TinyqError(f"cannot make the run folder {str(run.path)!r}: {e.strerror}; choose a writable --out") from None


def load_data(data: str | None, contract: InputContract, log: Log, *, seed: int, limit: int | None = None,
              synthetic_images: int = 3000) -> dict[str, ImageSet]:
    """The splits of the folder ``data``, or (None) the synthetic default."""
    if data is None:
        log(f"data: SYNTHETIC default ({synthetic_images} procedurally drawn figures, seed {seed}). "
            "It teaches the pipeline, not real people: pass --data DIR (person/ + non_person/) for a real detector.")
        return synthetic_splits(synthetic_images, contract.resolution, contract.channels, seed)
    t0 = time.time()
    if is_shards(data):
        return load_shard_splits(data, contract.resolution, contract.channels, limit, log)
    splits = load_splits(data, contract.resolution, contract.channels, seed, limit)
    for name, part in splits.items():
        skipped = f", {part.skipped_note()}" if part.skipped else ""
        log(f"data: {name}: {len(part)} images {part.counts()}{skipped}")
    log(f"data: loaded in {time.time() - t0:.1f}s from {data}")
    return splits


def load_init(path: str, contract: InputContract):
    """The float model ``--init`` names (a .h5, or a run folder holding float.h5), checked against ``contract``."""
    p = Path(path)
    if p.is_dir() and (p / "float.h5").exists():
        p = p / "float.h5"
    if not p.exists():
        raise TinyqError(f"--init {path!r} does not exist; give a float .h5 or a run folder holding float.h5")
    model = load_model(p)
    if tuple(model.input_shape[1:]) != contract.shape:
        raise TinyqError(f"--init model takes input {tuple(model.input_shape[1:])}, the recipe {contract.shape}")
    return model


def check_plan_inputs(model, opts, log: Log) -> None:
    """What a run will plan with, checked against ``model`` before a folder or any data: a ``--plan``
    file that fits it, a ``--size-budget`` it can meet."""
    if opts.plan:
        plan_from_file(opts.plan, model, opts.method, opts.act_bits)
    if opts.size_budget:
        from tinyq.mixed.budget import require_room

        require_room(model, opts.size_budget, opts.bits, opts.budget_for)


def choose_plan(float_model, splits, contract: InputContract, run: Run, log: Log, *, bits: int, method: str,
                act_bits: int, keep_8bit, size_budget: int | None = None, plan_file: str | None = None,
                learn_bits: bool = False, budget_for: str = "tflite", **search) -> dict[str, QuantSpec]:
    """The per-layer plan QAT follows: from ``plan_file``, under ``size_budget``, learned, or the default.

    ``search``: how ``--learn-bits`` trains (lr, batch, seed, teacher, distill, unlabeled, keep_float).
    """
    if plan_file:
        log(f"plan: following {plan_file}")
        return plan_from_file(plan_file, float_model, method, act_bits)
    if size_budget:
        from tinyq.pipeline.budget import budget_plan

        saved = run / "plan.json"
        if saved.exists():
            log(f"plan: reusing {saved}")
            return plan_from_file(saved, float_model, method, act_bits)
        what = "" if budget_for == "tflite" else " of AOT constants"
        log(f"plan: every weight layer chooses 2, 4 or 8 bits (at most {bits}) within {size_budget:,} bytes{what}; "
            "--keep-8bit does not apply")
        chosen = budget_plan(float_model, splits, contract, size_budget, method=method, act_bits=act_bits,
                             max_bits=bits, seed=search.get("seed", 0), budget_for=budget_for, log=log)
        log(chosen.table())
        write_json(saved, chosen.to_dict())
        return chosen.specs(method, act_bits)
    plan = default_plan(float_model, bits, method, keep_8bit, act_bits)
    if learn_bits:
        plan = learn_plan(float_model, plan, splits, contract, run, log, **search)
    return plan


def qat_phase(float_model, plan, splits, contract, run: Run, log: Log, *, epochs: int, lr: float, batch: int,
              seed: int, what: str, teacher=None, distill: float = 0.0, unlabeled: bool = False,
              keep_float: tuple[str, ...] | list[str] = (), features: float = 0.0, start=None,
              teacher_name: str = "the float model", callbacks=()):
    """Quantize ``float_model`` by ``plan``, calibrate (or ``start`` from trained quantizers:
    :func:`tinyq.qat.start_from`), fine-tune (``callbacks`` join the fit's); saves ``RUN/model.h5``."""
    built = build_qat(float_model, plan, calibration=calibration_images(splits, contract, seed),
                      keep_float=keep_float, start=start)
    qat = built.model
    if built.carried:
        log(f"start: the trained grids and clips of {', '.join(built.carried)}")
    if built.restarted:
        log(f"warning: {', '.join(built.restarted)}: the trained grid does not survive batch-norm folding "
            "(SAT's tanh clamp, or a per-tensor scale under per-channel BN); started from the calibrated grid")
    dropped = built.dropped_channels
    if dropped:
        run.update_metrics(dropped_channels=dropped)
        log(f"dead channels dropped (zero weights, ReLU output 0; outputs unchanged): {sum(dropped.values())} in "
            + ", ".join(f"{name} {n}" for name, n in dropped.items()))
    if len(splits.get("val", ())):
        val = splits["val"]
        step0 = accuracy(qat, val, contract)
        if unlabeled:  # the labels are the float model's answers: it agrees with itself
            run.update_metrics(qat_step0_val_agreement=step0)
            log(f"val agreement with the float model: quantized before QAT (BN folded, ranges calibrated) {step0:.4f}")
        else:
            run.update_metrics(float_val_accuracy=accuracy(float_model, val, contract), qat_step0_val_accuracy=step0)
            log(f"val accuracy: float {run.metrics()['float_val_accuracy']:.4f}; quantized before QAT (BN folded, "
                f"ranges calibrated) {step0:.4f}")
    if epochs:
        log(f"QAT: {epochs} epochs, {what}" + (
            f"; distilled from {teacher_name} (weight {distill}"
            + (f", features {features})" if features else ")") if teacher is not None else ""))
        fit_phase(qat, splits, contract, epochs, lr, "qat", run, log, batch=batch, seed=seed, teacher=teacher,
                  distill=distill, unlabeled=unlabeled, features=features, folded=built.folded,
                  carried=built.carried, callbacks=callbacks)
    with atomic_path(run.model) as tmp:
        qat.save(tmp)
    return qat


def finish(run: Run, qat, splits, contract, data_name: str, log: Log, float_model=None,
           agreement: bool = False) -> Run:
    """Held-out accuracy in Keras, conversion to ``model.tflite``, its accuracy in TFLM, the report.

    ``qat`` is None for the converter's PTQ (no Keras quantized model); ``float_model`` adds
    the float original's accuracy on the same images. With ``agreement`` the labels are the
    float model's answers: figures are named ``*_agreement`` and the float model has none.
    """
    from tinyq.pipeline.budget import check_trained_file
    from tinyq.pipeline.convert import convert_run
    from tinyq.report import write_report
    from tinyq.verify import confusion, tflm_predictions

    measure = "agreement" if agreement else "accuracy"
    metrics = {"data": data_name, "measure": measure}
    if qat is not None:
        metrics["diagnostics"] = diagnostics(qat)
    for split in ("val", "test"):
        if len(splits.get(split, ())):
            for prefix, model in (("keras", qat), ("float", None if agreement else float_model)):
                if model is not None:
                    metrics[f"{prefix}_{split}_{measure}"] = accuracy(model, splits[split], contract)
            metrics[f"keras_{split}_n"] = len(splits[split])
    run.update_metrics(**metrics)
    log("  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith(measure)))
    convert_run(run, representative=splits["train"].representative(), log=log)
    check_trained_file(run, log)
    test = splits.get("test", ())
    if len(test):
        log(f"TFLM: running model.tflite on {len(test)} test images ...")
        pred = tflm_predictions(run.tflite.read_bytes(), test, contract)
        run.update_metrics(**{f"tflm_test_{measure}": float((pred == test.y).mean()), "test_n": len(test),
                              "tflm_test_confusion": confusion(test.y, pred, len(contract.labels))})
    write_report(run.path)
    log(f"report: {run / 'report.md'} (tinyq report RUN --data DIR measures it on other images too)")
    return run
