"""``tinyq quantize MODEL``: QAT with distillation for a float Keras classifier a user brings.

The float model is the teacher; its quantized copy (BN folded, ranges calibrated) learns
from the teacher's outputs and, when the data is labelled, the labels. With ``unlabeled``
any folder of images serves: each image's label becomes the teacher's top-1, so every
figure reported is agreement with the float model. Without data, the images are generated
from the teacher's batch-norm statistics (:mod:`tinyq.data.invert`) and serve the same way.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tinyq import layers
from tinyq._tf import keras, tf
from tinyq.contract import InputContract
from tinyq.data import ImageSet, invert, layout, load_splits
from tinyq.data.folder import SPLITS, load_images, split
from tinyq.data.shards import is_shards, load_shard_splits
from tinyq.errors import TinyqError
from tinyq.fit import evaluate_keras
from tinyq.graph import check_supported, contract_of
from tinyq.logs import Log, bar, log_stderr
from tinyq.pipeline.distribute import Distribution, run_distributed
from tinyq.pipeline.options import PTQ_CHOICES, QuantizeJob, ptq_kind
from tinyq.pipeline.stages import check_plan_inputs, choose_plan, finish, make_run_folder, prepare_run, qat_phase
from tinyq.qat import load_model
from tinyq.version import __version__
from tinyq.runfolder import FORMAT_VERSION, Run, atomic_path, cache_root, write_json
__all__ = ["PTQ_CHOICES", "QuantizeJob", "ptq_kind", "quantize"]


def check_job_data(job: QuantizeJob, teacher) -> None:
    """Before any work: data-free quantization needs batch-norm statistics to generate images from."""
    if job.data is None and not invert.can_invert(teacher):
        raise TinyqError(f"{job.model!r} has no BatchNormalization layers to generate images from; pass --data DIR "
                         "(any folder of images, with --unlabeled)")


def generated_data(job: QuantizeJob, contract: InputContract, teacher, log: Log) -> dict[str, ImageSet]:
    """:func:`tinyq.data.invert.generated_splits` with a progress line, cached under tinyq's cache."""
    t0 = time.time()
    log(f"data: no --data: generating {job.generated_images} images from the model's batch-norm statistics "
        f"(seed {job.seed}; kept in tinyq's cache for the next run)")
    with bar(job.generated_images, "generating", "image") as shown:
        splits, cached = invert.generated_splits(teacher, job.generated_images, contract.value_range, job.seed,
                                                 cache=cache_root() / "generated",
                                                 progress=lambda done, total: shown.update(done - shown.n))
    log("data: read from the cache" if cached else f"data: generated in {time.time() - t0:.0f}s")
    for name in SPLITS:
        log(f"data: {name}: {len(splits[name])} images")
    return splits


def load_job_data(job: QuantizeJob, contract: InputContract, teacher, log: Log) -> dict[str, ImageSet]:
    if job.data is None:
        return relabel(generated_data(job, contract, teacher, log), teacher, contract)
    path = Path(job.data)
    if is_shards(path):
        if job.unlabeled:
            raise TinyqError(f"{job.data!r} is a pack, whose images carry their labels; drop --unlabeled, or pass "
                             "the image folder")
        return load_shard_splits(path, contract.resolution, contract.channels, job.limit, log)
    labelled = True
    try:
        layout(path)
    except TinyqError:
        if not (job.unlabeled and path.is_dir()):
            raise
        labelled = False
    if labelled:
        splits = load_splits(path, contract.resolution, contract.channels, job.seed, job.limit)
    else:
        splits = split(load_images(path, contract.resolution, contract.channels, job.limit, job.seed), seed=job.seed)
    if job.unlabeled:
        splits = relabel(splits, teacher, contract)
    for name in SPLITS:
        if name in splits:
            log(f"data: {name}: {len(splits[name])} images" + ("" if job.unlabeled else f" {splits[name].counts()}"))
    if len(splits["train"]) == 0:
        raise TinyqError(f"no training images in {job.data!r}")
    return splits


def relabel(splits: dict[str, ImageSet], teacher, contract: InputContract) -> dict[str, ImageSet]:
    """Each image's label becomes the teacher's top-1: accuracy on them is agreement with the teacher."""
    for part in splits.values():
        if len(part):
            part.y = evaluate_keras(teacher, part, contract).argmax(1).astype(np.int32)
    return splits


def quantize(job: QuantizeJob, out: str | Path, resume: bool = False, log: Log = log_stderr, callbacks=()) -> Run:
    """Quantize ``job.model`` into the run folder ``out``; ``callbacks`` (Keras) join the QAT fit's.

    With ``job.distribute`` the training phases run on many devices (:mod:`tinyq.pipeline.distribute`).
    """
    return run_distributed(job.distribute, out, resume,
                           lambda folder, dist: _quantize(job, folder, resume, log, callbacks, dist))


def _quantize(job: QuantizeJob, out: str | Path, resume: bool, log: Log, callbacks, dist: Distribution) -> Run:
    source = Path(job.model)
    if not source.exists():
        raise TinyqError(f"model {job.model!r} does not exist; give a .h5, .keras or SavedModel folder")
    try:
        teacher = load_model(source)
    except TinyqError:
        raise
    except Exception as e:
        raise TinyqError(f"cannot load {job.model!r} as a Keras model: {str(e).splitlines()[0][:160]}") from None
    declared = layers.declared(teacher)
    start = None
    if declared:
        if job.size_budget or job.plan or job.learn_bits or job.ptq == "converter":
            raise TinyqError(f"{job.model!r} declares its layers' bits (tinyq layers); --size-budget, --plan, "
                             "--learn-bits and --ptq converter choose them too: drop the option, or build the "
                             "model of plain Keras layers")
        start = layers.trained_state(teacher)
        # the model as trained (kernels Q(w)) is the teacher and the start; the declared specs join the plan below
        teacher = layers.to_float(teacher)
        log(f"model: {len(declared)} layers declare their quantization in tinyq layers ({', '.join(declared)}); "
            "--bits and --method apply to the others")
    keep_float = check_supported(teacher, job.allow_float)
    if keep_float:
        log(f"warning: --allow-float: {', '.join(keep_float)} left out of quantization-aware training; "
            "the converter quantizes them from calibration where TFLite has an int8 kernel, else keeps them float")
    contract = contract_of(teacher, job.value_range, job.labels)
    run = Run(out)
    settings = {**asdict(job), "keep_8bit": list(job.keep_8bit), "value_range": list(job.value_range),
                "labels": list(job.labels) if job.labels else None}
    record = {"format_version": FORMAT_VERSION, "tinyq_version": __version__, "kind": "quantize",
              "train": settings, "contract": contract.to_dict()}
    prepare_run(run, record, resume)
    check_plan_inputs(teacher, job, log)  # before a folder or any data
    check_job_data(job, teacher)
    splits = load_job_data(job, contract, teacher, log)
    make_run_folder(run)
    keras.utils.set_random_seed(job.seed)
    tf.config.experimental.enable_op_determinism()
    with atomic_path(run.float_model) as tmp:
        teacher.save(tmp)
    distill = 1.0 if job.agreement else job.distill
    uses_teacher = distill > 0 or job.distill_features > 0  # QAT's features; --learn-bits' search matches outputs
    lr = job.lr * (dist.replicas if job.scale_lr else 1)
    if dist.kind:
        log(dist.describe(job.batch, job.scale_lr))
        with dist.scope():  # the teacher's variables on every replica, as the student's will be
            teacher = load_model(source)
    with dist.scope():
        plan = choose_plan(teacher, splits, contract, run, log, bits=job.bits, method=job.method, act_bits=job.act_bits,
                           keep_8bit=job.keep_8bit, size_budget=job.size_budget, plan_file=job.plan,
                           budget_for=job.budget_for,
                           learn_bits=job.learn_bits, lr=lr, batch=job.batch, seed=job.seed,
                           teacher=teacher if distill > 0 else None, distill=distill, unlabeled=job.agreement,
                           keep_float=keep_float)
    plan = layers.apply_declared(plan, declared)
    data_name = job.data or "generated from the model"
    record["plan"] = {name: spec.to_dict() for name, spec in plan.items()}
    write_json(run.config_path, record)
    if job.ptq == "converter":
        log("PTQ: the TFLite converter's int8 post-training quantization of the float model "
            "(per-channel weights, ranges from representative images)")
        return finish(run, None, splits, contract, data_name, log, float_model=teacher,
                      agreement=job.agreement)
    if job.ptq == "tinyq":
        log(f"PTQ: tinyq's rounding, weights {job.bits}-bit per channel with MSE-searched clipping, no training")
        qat = qat_phase(teacher, plan, splits, contract, run, log, epochs=0, lr=job.lr, batch=job.batch,
                        seed=job.seed, what="", keep_float=keep_float, start=start)
        return finish(run, qat, splits, contract, data_name, log, float_model=teacher,
                      agreement=job.agreement)
    with dist.scope():
        qat = qat_phase(teacher, plan, splits, contract, run, log, epochs=job.epochs, lr=lr, batch=job.batch,
                        seed=job.seed, teacher=teacher if uses_teacher else None, distill=distill,
                        unlabeled=job.agreement, keep_float=keep_float, features=job.distill_features, start=start,
                        what=job.describe("declared by the model's tinyq layers" if declared else None),
                        teacher_name="your model as it computes (kernels Q(w))" if declared else "the float model",
                        callbacks=callbacks)
    return finish(run, qat, splits, contract, data_name, log, float_model=teacher,
                      agreement=job.agreement)
