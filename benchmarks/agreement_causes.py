"""Diagnostic: which of TFLite's integer steps make a run's float Keras model and its file disagree.

:class:`tinyq.integer.IntegerModel` computes what TFLM computes from the run's QAT model, to
the bit. This script changes it one integer step at a time back to what the float Keras model
computes, and prints each variant's top-1 agreement with the float Keras model on ``--data``:

- ``pool``: a whole-map average pool as MEAN (one requantization of the integer sum) instead of
  AVERAGE_POOL_2D (the average rounded on its input's grid, then requantized);
- ``rounding``: ``acc * M`` rounded once instead of MultiplyByQuantizedMultiplier's two roundings;
- ``bias``: the bias kept real instead of rounded to the int32 grid ``s_in * s_w``.

With all three the variant is Keras's own arithmetic on int8 tensors, so its agreement shows
what is left (float32 sums, the range nudging): near 100%.

    python benchmarks/agreement_causes.py RUN --data ../shared/data/vww-dev
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import itertools

import numpy as np


def _half_away(v: np.ndarray) -> np.ndarray:
    return (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int64)


def _once(acc, q, shift) -> np.ndarray:
    """``acc * M`` rounded once, ``M = q 2^(shift - 31)``."""
    return _half_away(np.asarray(acc, np.float64) * q.astype(np.float64) * np.power(2.0, shift.astype(np.float64) - 31))


def _twice(acc, q, shift) -> np.ndarray:
    """MultiplyByQuantizedMultiplier on a real ``acc``: ``acc 2^left q / 2^31`` rounded (ties up), then
    divided by ``2^right`` rounded half away from zero."""
    shift = shift.astype(np.float64)
    high = np.floor(np.asarray(acc, np.float64) * np.power(2.0, np.maximum(shift, 0)) * q.astype(np.float64) / 2.0 ** 31 + 0.5)
    return _half_away(high / np.power(2.0, np.maximum(-shift, 0)))


@contextlib.contextmanager
def keras_steps(pool: bool, rounding: bool, bias: bool):
    """:mod:`tinyq.integer` with the chosen steps computed as the float Keras model computes them."""
    from tinyq import integer

    saved = dict(integer.LAYERS), integer.mbqm, integer._weight_layer
    try:
        if pool:
            integer.LAYERS[integer.L.AveragePooling2D] = integer._mean
        if rounding:
            integer.mbqm = _once
        elif bias:  # the kernels' two roundings, of a real accumulator
            integer.mbqm = _twice
        if bias:
            rounded = "acc = np.round(acc).astype(np.int64) + np.round(bias / bias_unit).astype(np.int64)"
            source = inspect.getsource(saved[2])
            if rounded not in source:
                raise SystemExit("tinyq.integer._weight_layer changed: update this script's bias step")
            namespace = dict(vars(integer))
            exec(source.replace(rounded, "acc = np.round(acc) + bias / bias_unit"), namespace)
            for layer in (integer.L.Conv2D, integer.L.DepthwiseConv2D, integer.L.Dense):
                integer.LAYERS[layer] = namespace["_weight_layer"]
        yield integer
    finally:
        integer.LAYERS.clear()
        integer.LAYERS.update(saved[0])
        integer.mbqm, integer._weight_layer = saved[1], saved[2]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a tinyq run folder (model.h5)")
    p.add_argument("--data", required=True, help="an image folder (labelled or not)")
    p.add_argument("--limit", type=int, default=None, help="use the first N images")
    args = p.parse_args(argv)

    from tinyq.check import load_eval_data
    from tinyq.qat import load_model
    from tinyq.quantize import contract_of

    qat = load_model(f"{args.run}/model.h5")
    contract = contract_of(qat, (0.0, 1.0), None)
    images = load_eval_data(args.data, contract, args.limit, lambda m: None)
    x = contract.to_float(images.x)
    keras_top1 = qat.predict(x, verbose=0).argmax(-1)
    print(f"{args.run}: {len(x)} images from {args.data}")
    print("| pool as MEAN | one rounding | real bias | top-1 agreement with float Keras |")
    print("|---|---|---|---:|")
    for pool, rounding, bias in itertools.product((False, True), repeat=3):
        with keras_steps(pool, rounding, bias) as integer:
            top1 = integer.IntegerModel(qat).predict(x).argmax(-1)
        marks = ["yes" if v else "" for v in (pool, rounding, bias)]
        print(f"| {' | '.join(marks)} | {np.mean(top1 == keras_top1):.1%} |")


if __name__ == "__main__":
    main()
