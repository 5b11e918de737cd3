"""Diagnostic: which of TFLite's integer steps make a run's float Keras model and its file disagree.

:class:`tinyq.integer.IntegerModel` computes what TFLM computes from the run's QAT model, to
the bit. Its options change it one integer step at a time back to what the float Keras model
computes; this script prints each variant's top-1 agreement with the float Keras model on ``--data``:

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
import itertools

import numpy as np


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a tinyq run folder (model.h5)")
    p.add_argument("--data", required=True, help="an image folder (labelled or not)")
    p.add_argument("--limit", type=int, default=None, help="use the first N images")
    args = p.parse_args(argv)

    from tinyq.api import IntegerModel, contract_of, load_eval_data, load_model

    qat = load_model(f"{args.run}/model.h5")
    contract = contract_of(qat, (0.0, 1.0), None)
    images = load_eval_data(args.data, contract, args.limit, lambda m: None)
    x = contract.to_float(images.x)
    keras_top1 = qat.predict(x, verbose=0).argmax(-1)
    print(f"{args.run}: {len(x)} images from {args.data}")
    print("| pool as MEAN | one rounding | real bias | top-1 agreement with float Keras |")
    print("|---|---|---|---:|")
    for pool, rounding, bias in itertools.product((False, True), repeat=3):
        integer = IntegerModel(qat, pool_as_mean=pool, rounding="once" if rounding else "kernels", real_bias=bias)
        top1 = integer.predict(x).argmax(-1)
        marks = ["yes" if v else "" for v in (pool, rounding, bias)]
        print(f"| {' | '.join(marks)} | {np.mean(top1 == keras_top1):.1%} |")


if __name__ == "__main__":
    main()
