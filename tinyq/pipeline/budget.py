"""Planning under ``--size-budget`` with the real file measured, and the trained file checked against it."""
from __future__ import annotations

import numpy as np

from tinyq.convert.compact import compact_verified
from tinyq.convert.converter import convert
from tinyq.fit import calibration_images
from tinyq.logs import Log, quiet
from tinyq.mixed.budget import BUDGET_FORMATS, BudgetPlan, plan_for_budget
from tinyq.qat import quantize_model, quantized_layers
from tinyq.spec import QuantSpec


def planned_file(float_model, widths: dict[str, int], method: str, act_bits: int, pixels: np.ndarray,
                 contract) -> bytes:
    """The converted, compacted file of ``float_model`` quantized (no training) at ``widths``, as
    training will leave it in size: a method that learns each layer's levels (``levels``) gets a
    value table per 2-bit layer, which layers that start alike would otherwise share here and not
    after training."""
    specs = {n: QuantSpec(method=method, weight_bits=b, act_bits=act_bits) for n, b in widths.items()}
    # calibrated as training's model is: with TFMOT's uncalibrated [0, 0] input range the converter
    # folds parts of the graph away and the file comes out smaller than the trained one
    qat = quantize_model(float_model, specs, calibration=contract.to_float(pixels))
    for index, (_, _, quantizer, qvars) in enumerate(quantized_layers(qat)):
        quantizer.set_own_table(qvars, index)
    return compact_verified(convert(qat, pixels, contract), pixels, contract, n=8)[0]  # as the run writes it


def file_bytes(float_model, widths: dict[str, int], method: str, act_bits: int, pixels: np.ndarray,
               contract, fmt: str = "tflite") -> int:
    """Bytes of :func:`planned_file` in format ``fmt`` (:data:`tinyq.mixed.budget.BUDGET_FORMATS`)."""
    return BUDGET_FORMATS[fmt].measure(planned_file(float_model, widths, method, act_bits, pixels, contract))


def budget_plan(float_model, splits, contract, budget: int, *, method: str, act_bits: int, max_bits: int,
                estimator: str = "hutchinson", seed: int = 0, budget_for: str = "tflite",
                log: Log = quiet) -> BudgetPlan:
    """:func:`plan_for_budget` on the training images of ``splits`` (256 for the sensitivity)."""
    x = calibration_images(splits, contract, seed, n=256)
    pixels = splits["train"].head(64)
    return plan_for_budget(float_model, x, budget,
                           lambda widths: file_bytes(float_model, widths, method, act_bits, pixels, contract,
                                                     budget_for),
                           max_bits=max_bits, estimator=estimator, fmt=budget_for, log=log)


def check_trained_file(run, log: Log = quiet) -> bool | None:
    """After training, whether ``RUN/model.tflite`` is within the run's ``--size-budget`` in the format
    of its ``--budget-for`` (None: no budget).

    The plan measured a file of the untrained model at the planned widths; training changes only
    values, and the run's file is expected to match, but what compaction and the shared 2-bit
    tables keep is decided on the trained values. A file over the budget is said plainly (and
    kept in ``metrics.json``) rather than trusted.
    """
    settings = run.config().get("train", {})
    budget, fmt = settings.get("size_budget"), settings.get("budget_for", "tflite")
    if not budget:
        return None
    size = BUDGET_FORMATS[fmt].measure(run.tflite.read_bytes())
    run.update_metrics(size_budget=budget, budget_for=fmt, budget_bytes=size, within_size_budget=size <= budget)
    if size > budget:
        what = f"{run.tflite} is" if fmt == "tflite" else f"the AOT engine of {run.tflite} has constants of"
        log(f"warning: {what} {size:,} bytes, {size - budget:,} over --size-budget {budget:,} "
            f"(the plan measured the untrained model; see {run / 'model.compaction.json'}); for "
            f"{'a file' if fmt == 'tflite' else 'constants'} within it, "
            f"train again with --size-budget {budget - (size - budget)}")
    return size <= budget
