"""Diagnostic: where LiteRT's reference kernels and TFLM part on a run's file, and why.

``tinyq check`` prints ``LiteRT vs TFLM: max |int8 output difference|``. LiteRT runs there with
its reference kernels; TFLM is what the board runs, and :class:`tinyq.integer.IntegerModel`
equals it. This script runs the file in both on ``--data`` and then runs the integer model
with FULLY_CONNECTED requantizing by one rounding (``round(acc * M)``) instead of
MultiplyByQuantizedMultiplier's two. If that variant equals LiteRT on every image, the whole
difference is LiteRT's reference FULLY_CONNECTED rounding once.

    python benchmarks/litert_fc.py RUN --data ../shared/data/vww-dev
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

def _differing(a: np.ndarray, b: np.ndarray) -> str:
    d = np.abs(a.astype(np.int64) - b.astype(np.int64)).max(axis=1)
    return f"{int((d > 0).sum())} images differ (max {int(d.max())})"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a tinyq run folder (model.h5 and model.tflite)")
    p.add_argument("--data", required=True, help="an image folder (labelled or not)")
    p.add_argument("--limit", type=int, default=None, help="use the first N images")
    args = p.parse_args(argv)

    from tinyq.api import IntegerModel, contract_of, load_eval_data, load_model
    from tinyq.runtimes import litert_outputs, model_input, tflm_outputs
    from tinyq.tflite import flatbuffer

    data = Path(args.run, "model.tflite").read_bytes()
    fb = flatbuffer.parse(data)
    qat = load_model(f"{args.run}/model.h5")
    contract = contract_of(qat, (0.0, 1.0), None)
    images = load_eval_data(args.data, contract, args.limit, lambda m: None)
    x_int = model_input(fb, images.x, contract)
    litert, kernels = litert_outputs(data, x_int)
    tflm = tflm_outputs(data, x_int)
    x = contract.to_float(images.x)
    exact = IntegerModel(qat).predict(x)
    once = IntegerModel(qat, rounding="litert").predict(x)
    print(f"{args.run}: {len(x)} images from {args.data}; LiteRT with {kernels} kernels")
    print("| compared | int8 outputs |")
    print("|---|---|")
    print(f"| LiteRT vs TFLM | {_differing(litert, tflm)} |")
    print(f"| integer model vs TFLM | {_differing(exact, tflm)} |")
    print(f"| integer model, FULLY_CONNECTED rounding once, vs LiteRT | {_differing(once, litert)} |")


if __name__ == "__main__":
    main()
