"""``tinyq quantize MODEL``: QAT with distillation for a float Keras classifier a user brings.

The float model is the teacher; its quantized copy (BN folded, ranges calibrated) learns
from the teacher's outputs and, when the data is labelled, the labels. With ``unlabeled``
any folder of images serves: each image's label becomes the teacher's top-1, so every
accuracy reported is agreement with the float model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tinyq import layers
from tinyq._tf import keras, tf
from tinyq.contract import InputContract
from tinyq.data import ImageSet, layout, load_splits
from tinyq.data.folder import SPLITS, load_images, split
from tinyq.errors import TinyqError, expected_one_of
from tinyq.fit import evaluate_keras
from tinyq.graph import check_supported, contract_of
from tinyq.logs import Log, log_stderr
from tinyq.pipeline.options import QuantOptions
from tinyq.pipeline.stages import check_plan_inputs, choose_plan, finish, make_run_folder, prepare_run, qat_phase
from tinyq.qat import load_model
from tinyq.version import __version__
from tinyq.runfolder import FORMAT_VERSION, Run, atomic_path, write_json

PTQ_CHOICES = ("converter", "tinyq")


def ptq_kind(bits: int, choice: str) -> str:
    """``--ptq`` without a value: the converter's int8 PTQ at 8 bits, tinyq's rounding below."""
    return ("converter" if bits == 8 else "tinyq") if choice == "auto" else choice


@dataclass(frozen=True, kw_only=True)
class QuantizeJob(QuantOptions):
    model: str
    data: str
    unlabeled: bool = False
    distill: float = 0.5
    distill_features: float = 1.0  # weight of the feature term (tinyq.distill)
    epochs: int = 3
    batch: int = 64
    lr: float = 2e-4
    seed: int = 0
    limit: int | None = None
    value_range: tuple[float, float] = (0.0, 1.0)
    labels: tuple[str, ...] | None = None
    allow_float: bool = False
    ptq: str | None = None  # None: QAT; "converter": the TFLite converter's int8 PTQ; "tinyq": rounding only

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_run(self.seed, self.limit)
        lo, hi = self.value_range
        if not lo < hi:
            raise TinyqError(f"--value-range needs lo < hi; got {lo},{hi}")
        if self.learn_bits and self.ptq:
            raise TinyqError("--learn-bits trains (it learns widths by gradient); it cannot go with --ptq")
        if self.ptq not in (None, *PTQ_CHOICES):
            raise expected_one_of("--ptq", PTQ_CHOICES, self.ptq)
        if self.ptq == "converter" and (self.size_budget or self.plan):
            raise TinyqError("--ptq converter makes int8 only; per-layer widths need --ptq tinyq (or QAT)")
        if self.ptq == "converter" and self.bits != 8:
            raise TinyqError(f"--ptq converter is the TFLite converter's int8 quantization; got --bits {self.bits}: "
                             "use --ptq tinyq for 2-4 bits")
        if not 0.0 <= self.distill <= 1.0:
            raise TinyqError(f"--distill must lie in 0..1 (the weight of the teacher's term); got {self.distill}")
        if self.distill_features < 0:
            raise TinyqError(f"--distill-features must be >= 0 (0: outputs only); got {self.distill_features}")
        if self.epochs < 0 or self.batch < 1:
            raise TinyqError("--epochs must be >= 0 and --batch >= 1")


def load_job_data(job: QuantizeJob, contract: InputContract, teacher, log: Log) -> dict[str, ImageSet]:
    path = Path(job.data)
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
        for name, part in splits.items():  # the teacher's top-1 is the label: accuracy = agreement
            if len(part):
                part.y = evaluate_keras(teacher, part, contract).argmax(1).astype(np.int32)
    for name in SPLITS:
        if name in splits:
            log(f"data: {name}: {len(splits[name])} images" + ("" if job.unlabeled else f" {splits[name].counts()}"))
    if len(splits["train"]) == 0:
        raise TinyqError(f"no training images in {job.data!r}")
    return splits


def quantize(job: QuantizeJob, out: str | Path, resume: bool = False, log: Log = log_stderr, callbacks=()) -> Run:
    """Quantize ``job.model`` into the run folder ``out``; ``callbacks`` (Keras) join the QAT fit's."""
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
    splits = load_job_data(job, contract, teacher, log)
    make_run_folder(run)
    keras.utils.set_random_seed(job.seed)
    tf.config.experimental.enable_op_determinism()
    with atomic_path(run.float_model) as tmp:
        teacher.save(tmp)
    distill = 1.0 if job.unlabeled else job.distill
    uses_teacher = distill > 0 or job.distill_features > 0  # QAT's features; --learn-bits' search matches outputs
    plan = choose_plan(teacher, splits, contract, run, log, bits=job.bits, method=job.method, act_bits=job.act_bits,
                       keep_8bit=job.keep_8bit, size_budget=job.size_budget, plan_file=job.plan,
                       learn_bits=job.learn_bits, lr=job.lr, batch=job.batch, seed=job.seed,
                       teacher=teacher if distill > 0 else None, distill=distill, unlabeled=job.unlabeled,
                       keep_float=keep_float)
    plan = layers.apply_declared(plan, declared)
    record["plan"] = {name: spec.to_dict() for name, spec in plan.items()}
    write_json(run.config_path, record)
    if job.ptq == "converter":
        log("PTQ: the TFLite converter's int8 post-training quantization of the float model "
            "(per-channel weights, ranges from representative images)")
        return finish(run, None, splits, contract, job.data, log, float_model=teacher)
    if job.ptq == "tinyq":
        log(f"PTQ: tinyq's rounding, weights {job.bits}-bit per channel with MSE-searched clipping, no training")
        qat = qat_phase(teacher, plan, splits, contract, run, log, epochs=0, lr=job.lr, batch=job.batch,
                        seed=job.seed, what="", keep_float=keep_float, start=start)
        return finish(run, qat, splits, contract, job.data, log, float_model=teacher)
    qat = qat_phase(teacher, plan, splits, contract, run, log, epochs=job.epochs, lr=job.lr, batch=job.batch,
                    seed=job.seed, teacher=teacher if uses_teacher else None, distill=distill,
                    unlabeled=job.unlabeled, keep_float=keep_float, features=job.distill_features, start=start,
                    what=job.describe("declared by the model's tinyq layers" if declared else None),
                    teacher_name="your model as it computes (kernels Q(w))" if declared else "the float model",
                    callbacks=callbacks)
    return finish(run, qat, splits, contract, job.data, log, float_model=teacher)
