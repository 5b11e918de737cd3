"""``tinyq plan``: the size-budget plan for a recipe or a user's model, without training."""
from __future__ import annotations

from pathlib import Path

from tinyq import recipes
from tinyq.errors import TinyqError
from tinyq.graph import check_supported, contract_of
from tinyq.logs import Log, quiet
from tinyq.mixed.budget import BudgetPlan
from tinyq.pipeline.budget import budget_plan
from tinyq.pipeline.options import QuantOptions
from tinyq.pipeline.quantize import QuantizeJob, load_job_data
from tinyq.pipeline.stages import load_data, load_init
from tinyq.qat import load_model
from tinyq.runfolder import write_json


def plan_target(target: str, size_budget: int, *, data: str | None = None, init: str | None = None,
                bits: int = 8, method: str = "ste", act_bits: int = 8, estimator: str = "hutchinson",
                value_range=(0.0, 1.0), channels: int = 3, limit: int | None = 2000, seed: int = 0,
                out: str | Path | None = None, budget_for: str = "tflite", log: Log = quiet) -> BudgetPlan:
    """Plan ``target`` (a recipe name, or a Keras model file) within ``size_budget`` bytes of
    ``budget_for`` (the ``.tflite`` file, or the AOT engine's constants).

    A recipe's sensitivity is measured on its untrained network unless ``init`` gives trained
    float weights (``tinyq train --size-budget`` plans again after its float phase). Images
    come from ``data`` (labels not needed) or, for a recipe, the synthetic default.
    """
    QuantOptions(bits=bits, method=method, act_bits=act_bits, size_budget=size_budget, budget_for=budget_for)
    if Path(target).exists():
        model = load_model(target)
        check_supported(model)
        contract = contract_of(model, value_range, None)
        if data is None:
            raise TinyqError("tinyq plan MODEL needs --data DIR: images to measure the model's sensitivity on")
        job = QuantizeJob(model=target, data=data, unlabeled=True, limit=limit, seed=seed, value_range=value_range)
        splits = load_job_data(job, contract, model, log)
    else:
        recipe = recipes.get(target)
        contract = recipe.contract(channels)
        splits = load_data(data, contract, log, seed=seed, limit=limit, synthetic_images=600)
        if init:
            model = load_init(init, contract)
        else:
            model = recipe.model(channels)
            log("plan: sensitivity of the untrained network (no --init): a rough guide; "
                "tinyq train --size-budget plans again after its float phase")
    plan = budget_plan(model, splits, contract, size_budget, method=method, act_bits=act_bits, max_bits=bits,
                       estimator=estimator, seed=seed, budget_for=budget_for, log=log)
    if out is not None:
        write_json(out, plan.to_dict())
    return plan
