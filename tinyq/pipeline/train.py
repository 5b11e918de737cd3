"""``tinyq train RECIPE``: from the recipe's pretrained model, quantization with distillation
(:mod:`tinyq.pipeline.quantize`); with ``from_scratch``, a float phase, then QAT. A backup every
epoch, ``resume``, seeded runs."""
from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from tinyq import recipes
from tinyq._tf import keras, tf
from tinyq.fit import fit_phase
from tinyq.logs import Log, log_stderr
from tinyq.pipeline.distribute import Distribution, run_distributed
from tinyq.pipeline.options import TrainConfig
from tinyq.pipeline.quantize import quantize
from tinyq.pipeline.stages import (check_plan_inputs, choose_plan, finish, load_data, load_init,
                                   make_run_folder, prepare_run, qat_phase)
from tinyq.qat import load_model
from tinyq.version import __version__
from tinyq.runfolder import FORMAT_VERSION, Run, atomic_path, write_json

__all__ = ["TrainConfig", "train"]


def train(config: TrainConfig, out: str | Path, resume: bool = False, log: Log = log_stderr, callbacks=()) -> Run:
    """Train ``config.recipe`` into the run folder ``out``; returns the run. ``callbacks`` (Keras) join the QAT fit's.

    From the recipe's pretrained model (the default where it ships one) this is
    :func:`tinyq.pipeline.quantize.quantize` of that model: distillation plus the labels of
    ``config.data``, or images generated from the model without it.
    """
    if config.starts_pretrained():
        return quantize(config.quantize_job(), out, resume=resume, log=log, callbacks=callbacks)
    return run_distributed(config.distribute, out, resume,
                           lambda folder, dist: _train(config, folder, resume, log, callbacks, dist))


def _train(config: TrainConfig, out: str | Path, resume: bool, log: Log, callbacks, dist: Distribution) -> Run:
    recipe = recipes.get(config.recipe)
    contract = recipe.contract(config.channels)
    run = Run(out)
    record = {"format_version": FORMAT_VERSION, "tinyq_version": __version__, "kind": "train",
              "train": {**asdict(config), "keep_8bit": list(config.keep_8bit)}, "contract": contract.to_dict()}
    prepare_run(run, record, resume)
    # before creating anything: a bad --init, plan or data leaves no folder
    init = load_init(config.init, contract) if config.init and not (resume and run.float_model.exists()) else None
    if init is not None:
        check_plan_inputs(init, config, log)
    elif config.plan:  # the recipe's layers; its size at the end of the float phase is not known yet
        check_plan_inputs(recipe.model(config.channels), replace(config, size_budget=None), log)
    splits = load_data(config.data, contract, log, seed=config.seed, limit=config.limit,
                       synthetic_images=config.synthetic_images)
    make_run_folder(run)
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    scale = dist.replicas if config.scale_lr else 1
    if dist.kind:
        log(dist.describe(config.batch, config.scale_lr))
    with dist.scope():  # every model and optimizer of training on the strategy's replicas
        if resume and run.float_model.exists():
            log(f"float: resuming from {run.float_model}")
            float_model = load_model(run.float_model)
        elif init is not None:
            float_model = init
            log(f"float: starting QAT from {config.init} (no float phase)")
            write_json(run.config_path, record)
            with atomic_path(run.float_model) as tmp:
                float_model.save(tmp)
        else:
            float_model = recipe.model(config.channels)
            write_json(run.config_path, record)
            if config.epochs:
                log(f"float training: {config.epochs} epochs, {len(splits['train'])} images")
                fit_phase(float_model, splits, contract, config.epochs, config.lr * scale, "float", run, log,
                          batch=config.batch, seed=config.seed)
            with atomic_path(run.float_model) as tmp:
                float_model.save(tmp)

        plan = choose_plan(float_model, splits, contract, run, log, bits=config.bits, method=config.method,
                           act_bits=config.act_bits, keep_8bit=config.keep_8bit, size_budget=config.size_budget,
                           budget_for=config.budget_for, plan_file=config.plan, learn_bits=config.learn_bits, lr=config.qat_lr * scale, batch=config.batch,
                           seed=config.seed)
        record["plan"] = {name: spec.to_dict() for name, spec in plan.items()}
        write_json(run.config_path, record)
        qat = qat_phase(float_model, plan, splits, contract, run, log, epochs=config.qat_epochs, lr=config.qat_lr * scale,
                        batch=config.batch, seed=config.seed, what=config.describe(), callbacks=callbacks)
    return finish(run, qat, splits, contract, config.data or "synthetic", log, float_model=float_model)
