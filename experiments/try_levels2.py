"""Controls for the ``levels`` method (issue 4, thirteenth measurement): not tinyq features.

``tinyq quantize MODEL --bits 2 --method levels`` learns one inner level per 2-bit layer from
the MSE-best start (``tinyq.quantizers.levels``). Two controls separate the start from the
learning, each with table (a)'s settings (``--unlabeled --epochs 3 --seed S``), then ``tinyq
check`` on ``--vww`` in TFLM:

- ``--fixed``: the MSE-best inner level is kept (not trained);
- ``--uniform-start``: the inner level starts at ste's 42 with ste's start scales, and is learned.

    python experiments/try_levels2.py --model ../shared/models/vww_96.h5 --data ../shared/data/people96 \\
        --vww ../shared/data/vww-dev --seed 0 --fixed --out try-levels/fixed-s0

Prints one line: the control, the seed, vww-dev accuracy in TFLM, Keras/TFLM disagreements,
each 2-bit layer's inner integer ``k``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinyq._tf import tf
from tinyq.verify import check
from tinyq.qat import diagnostics, load_model
from tinyq.pipeline.quantize import QuantizeJob, quantize
from tinyq.quantizers import registry
from tinyq.quantizers.base import WeightQuantizer
from tinyq.quantizers.levels import LearnedLevels


class FixedLevels(LearnedLevels):
    """The MSE-best inner level, not trained."""

    def build_extra(self, tensor_shape, name, layer):
        if not self.lut:
            return {}
        return {"inner": layer.add_weight(name=f"{name}_inner", shape=(), trainable=False,
                                          initializer=tf.keras.initializers.Constant(0.5))}


class UniformStart(LearnedLevels):
    """ste's start (k = 42, MSE-best uniform scales), the inner level learned."""

    def calibrate(self, w, weights):
        WeightQuantizer.calibrate(self, w, weights)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--vww", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    control = p.add_mutually_exclusive_group(required=True)
    control.add_argument("--fixed", action="store_true")
    control.add_argument("--uniform-start", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    for path in (args.model, args.data, args.vww):
        if not Path(path).exists():
            sys.exit(f"skipped: {path} is absent (this benchmark needs ../shared)")
    cls = FixedLevels if args.fixed else UniformStart
    registry.register(registry.Method("levels-control", "weights", "", "", cls))
    out = Path(args.out)
    quantize(QuantizeJob(model=args.model, data=args.data, bits=2, method="levels-control", unlabeled=True,
                         epochs=args.epochs, seed=args.seed), out)
    ks = {name: int(d["inner_level"]) for name, d in diagnostics(load_model(str(out / "model.h5"))).items()
          if "inner_level" in d}
    r = check(out / "model.tflite", args.vww)
    print(f"{'fixed' if args.fixed else 'uniform start'}\tseed {args.seed}\tvww-dev TFLM {r['tflm']['accuracy']:.4f}\t"
          f"Keras/TFLM disagreements {r['tflm'].get('disagreements')} of {r['n']}\tk {ks}")


if __name__ == "__main__":
    main()
