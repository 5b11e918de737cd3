"""``--learn-bits``: a search epoch in which CPQ / DropBits learns each layer's width, then QAT at it.

The layers the plan gives ``--bits`` learn a width among those TFLM runs up to ``--bits``
(:func:`tinyq.quantizers.cpq.bit_choices`: 2, 4, 8); below 8 bits the kept layers (first,
last, depthwise by default) stay 8-bit, at ``--bits 8`` every layer learns. The search trains a copy of the model with gated widths for
:data:`SEARCH_EPOCHS` (same data, loss and learning rate as QAT), reads each layer's learned
width, and returns the plan QAT then follows from the float model: a width is a per-layer
plan entry like any other, so conversion and export need nothing special. The result is kept
in ``RUN/learned_bits.json``, so a resumed run does not search again.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from tinyq.fit import calibration_images, fit_phase
from tinyq.qat import quantize_model, quantized_layers
from tinyq.quantizers.cpq import bit_choices, gate_gain
from tinyq.runfolder import Run, read_json, write_json
from tinyq.spec import QuantSpec

SEARCH_EPOCHS = 1


def search_plan(plan: dict[str, QuantSpec]) -> dict[str, QuantSpec]:
    """The plan with ``learn_bits`` on for every layer that may go below its width (more than 2 bits)."""
    top = max(spec.weight_bits for spec in plan.values())
    return {name: dataclasses.replace(spec, learn_bits=spec.weight_bits == top and top > 2)
            for name, spec in plan.items()}


def learned_plan(plan: dict[str, QuantSpec], widths: dict[str, int]) -> dict[str, QuantSpec]:
    return {name: dataclasses.replace(spec, weight_bits=widths.get(name, spec.weight_bits), learn_bits=False)
            for name, spec in plan.items()}


def learn_plan(float_model, plan: dict[str, QuantSpec], splits, contract, run: Run, log, *, lr: float, batch: int,
               seed: int, teacher=None, distill: float = 0.0, unlabeled: bool = False,
               keep_float=()) -> dict[str, QuantSpec]:
    """Search each learning layer's width (one epoch of gated CPQ training); the plan with those widths."""
    path = run / "learned_bits.json"
    if path.exists():
        log(f"learned bits: reusing {path}")
        return learned_plan(plan, {n: d["bits"] for n, d in read_json(path)["layers"].items()})
    searching = search_plan(plan)
    steps = SEARCH_EPOCHS * -(-len(splits["train"]) // batch)
    model = quantize_model(float_model, searching, calibration=calibration_images(splits, contract, seed),
                           keep_float=keep_float, learn_options={"gate_gain": gate_gain(lr, steps)})
    log(f"learn bits: {SEARCH_EPOCHS} epoch, {sum(s.learn_bits for s in searching.values())} layers choose "
        f"among {sorted({c for s in searching.values() if s.learn_bits for c in bit_choices(s.weight_bits)})} bits")
    fit_phase(model, splits, contract, SEARCH_EPOCHS, lr, "bits", run, log, batch=batch, seed=seed,
              teacher=teacher, distill=distill, unlabeled=unlabeled)
    layers = {}
    for layer, weight, quantizer, qvars in quantized_layers(model):
        if getattr(quantizer, "learn_bits", False):
            keep = quantizer.keep_probabilities(qvars).numpy()
            layers[layer.layer.name] = {"bits": quantizer.learned_bits(qvars), "params": int(np.prod(weight.shape)),
                                        "keep": {f"{c}bit": float(p) for c, p in zip(quantizer.choices[1:], keep)}}
    for name, d in layers.items():
        log(f"  {name:<28} {d['bits']} bits  {d['params']:>7,} weights  keep "
            + ", ".join(f"{k} {p:.2f}" for k, p in d["keep"].items()))
    total = sum(d["params"] for d in layers.values())
    mean = sum(d["bits"] * d["params"] for d in layers.values()) / max(1, total)
    log(f"learned bits: {mean:.2f} bits per weight on average over the {len(layers)} learning layers")
    run.update_metrics(learned_bits={n: d["bits"] for n, d in layers.items()}, learned_mean_bits=mean)
    write_json(path, {"layers": layers, "mean_bits": mean, "search_epochs": SEARCH_EPOCHS})
    return learned_plan(plan, {n: d["bits"] for n, d in layers.items()})


