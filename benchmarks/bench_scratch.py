"""Benchmark (issue 4, table b): every method trained from scratch on people96, at 2 and 4 bits.

One float person-detect model is trained on ``--data``/train (the 8-bit ``ste`` run's float
phase); every other row starts QAT from that float model (``--init``), so rows differ only in
method and bits, with the same epochs, seed and images. Next to them: the float model and
TFMOT's own default 8-bit QAT of the same float model (same epochs, lr and batch), converted
with the same representative images. Accuracy on ``--data``/test and on ``--vww`` in TFLM
(and Keras where a tinyq run exists), Keras/TFLM top-1 agreement, file bytes.

    python benchmarks/bench_scratch.py --data ../shared/data/people96 --vww ../shared/data/vww-dev \\
        --epochs 12 --qat-epochs 5 --out bench-scratch
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench_pipeline import float_row
from tinyq.verify import check
from tinyq.pipeline.options import SCRATCH
from tinyq.pipeline.train import TrainConfig, train
from tinyq.logs import log_stderr


METHODS = ("ste", "qgt", "daq", "qgt+daq", "sat", "cpq")


def measure(tflite: Path, sets: dict[str, Path]) -> dict:
    row = {"file_bytes": tflite.stat().st_size}
    for name, folder in sets.items():
        result = check(tflite, folder, log=log_stderr)
        row[f"{name}_tflm"] = result["tflm"]["accuracy"]
        if "keras" in result:
            row[f"{name}_keras"] = result["keras"]["accuracy"]
            row[f"{name}_agreement"] = result["tflm"]["agreement_with_keras"]
    return row


def tfmot_row(float_h5: Path, data: str, out: Path, epochs: int, lr: float, batch: int, seed: int,
              sets: dict[str, Path]) -> dict:
    """TFMOT's default 8-bit QAT (``quantize_model``) of the float model, fit like tinyq's QAT phase."""
    from tinyq._tf import keras, tf, tfmot
    from tinyq.contract import InputContract
    from tinyq.data import load_splits
    from tinyq.data.pipeline import training_batches
    from tinyq.qat import load_model

    target = out / "tfmot-default-8bit.tflite"
    if not target.exists():
        contract = InputContract.from_dict(json.loads((float_h5.parent / "config.json").read_text())["contract"])
        splits = load_splits(data, contract.resolution, contract.channels, seed, None)
        keras.utils.set_random_seed(seed)
        model = tfmot.quantization.keras.quantize_model(load_model(float_h5))
        steps = -(-len(splits["train"]) // batch)
        model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(lr, epochs * steps, alpha=0.05)),
                      "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(training_batches(splits["train"].x, splits["train"].y, contract, batch, seed, epochs),
                  epochs=epochs, steps_per_epoch=steps, verbose=2)
        rep = contract.to_float(splits["train"].x[np.random.default_rng(seed).permutation(len(splits["train"]))[:200]])
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x[None]] for x in rep)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
        target.write_bytes(converter.convert())
    return {"bits": 8, "method": "TFMOT default QAT", **measure(target, sets)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--vww", required=True)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--bits", default="2,4")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--qat-epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench-scratch")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = {"people96_test": Path(args.data) / "test", "vww_dev": Path(args.vww)}
    t0 = time.time()
    common = dict(data=args.data, epochs=args.epochs, qat_epochs=args.qat_epochs, seed=args.seed)

    def run(bits: int, method: str, **extra) -> dict:
        folder = out / f"w{bits}-{method.replace('+', '-')}"
        if not (folder / "model.tflite").exists():
            train(TrainConfig(bits=bits, method=method, from_scratch="init" not in extra, **common, **extra), folder,
                  resume=(folder / "config.json").exists())
        return {"bits": bits, "method": method, **measure(folder / "model.tflite", sets)}

    rows = [run(8, "ste")]
    base = out / "w8-ste"
    rows.insert(0, {"bits": "float", "method": "", **{k: v for k, v in float_row(base, sets).items()
                                                       if k == "file_bytes" or k.endswith("_keras")}})
    rows.append(tfmot_row(base / "float.h5", args.data, out, args.qat_epochs, SCRATCH["qat_lr"],
                          TrainConfig.batch, args.seed, sets))
    for bits in (int(b) for b in args.bits.split(",")):
        rows += [run(bits, m, init=str(base / "float.h5")) for m in args.methods.split(",")]
    (out / "rows.json").write_text(json.dumps(rows, indent=2) + "\n")

    def pct(v):
        return "" if v is None else f"{100 * v:.1f}%"

    lines = ["| bits | method | people96/test TFLM | vww-dev TFLM | vww-dev Keras/TFLM agreement | file bytes |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        p96 = r.get("people96_test_tflm", r.get("people96_test_keras"))
        vww = r.get("vww_dev_tflm", r.get("vww_dev_keras"))
        lines.append(f"| {r['bits']} | {r['method']} | {pct(p96)} | {pct(vww)} | {pct(r.get('vww_dev_agreement'))} "
                     f"| {r['file_bytes']:,} |")
    command = "python benchmarks/bench_scratch.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = "\n".join(lines)
    print(f"{table}\n\n{command}\n({time.time() - t0:.0f}s)")
    (out / "bench.md").write_text(f"{table}\n\n`{command}`\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
