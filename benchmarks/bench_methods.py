"""Benchmark: every quantization method on the real task, and its QAT step time against TFMOT's.

(a) ``tinyq quantize MODEL --method M --bits B`` for each method and bit width, distilled on
the train split of ``--data`` (unlabelled: the float model alone supervises), accuracy on
``--vww`` in TFLM, file bytes; same epochs, seed and images for every row.
(b) QAT step time of each method relative to TFMOT's default 8-bit QAT on the same model and
batch, measured in this process, alternating between the two to share the machine's noise.

    python benchmarks/bench_methods.py --model ../shared/models/vww_96.h5 --data ../shared/data/people96 \\
        --vww ../shared/data/vww-dev --bits 2,4 --epochs 3 --limit 3000 --out bench-methods

``--methods`` takes ``cpq/learn`` for CPQ with ``--learn-bits`` (a learned width per layer up to ``--bits``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tinyq.quantize import QuantizeJob, quantize
from tinyq.report import write_report
from tinyq.train import log_stderr

METHODS = ("ste", "qgt", "daq", "qgt+daq", "sat", "cpq", "ste+cgpact")


def accuracy_row(args, method: str, bits: int) -> dict:
    """One row; a method written ``cpq/learn`` runs ``--method cpq --learn-bits`` (widths up to ``bits``)."""
    method, _, learn = method.partition("/")
    out = Path(args.out) / f"w{bits}-{method.replace('+', '-')}{'-learn' if learn else ''}"
    job = QuantizeJob(model=args.model, data=args.data, bits=bits, method=method, unlabeled=True,
                      epochs=args.epochs, limit=args.limit, seed=args.seed, learn_bits=bool(learn))
    if not (out / "model.tflite").exists():
        quantize(job, out, resume=(out / "config.json").exists(), log=log_stderr)
    report = write_report(out, args.vww, log=log_stderr)
    this = next(p for p in report["accuracy_vs_size"] if p["model"] == "this run" and p["data"] == args.vww)
    flt = next(p for p in report["accuracy_vs_size"] if p["model"] == "float original" and p["data"] == args.vww)
    return {"method": method + (" --learn-bits" if learn else ""), "bits": bits, "vww_dev_tflm": this["accuracy"], "float_vww_dev": flt["accuracy"],
            "agreement_held_out": report["metrics"].get("tflm_test_accuracy"), "file_bytes": this["bytes"],
            "run": str(out)}


def step_times(model_path: str, methods, bits: int, batch: int = 64, steps: int = 15, rounds: int = 3) -> dict:
    """Seconds per QAT training step: TFMOT's default 8-bit QAT and tinyq with each method."""
    from tinyq._tf import keras, tfmot
    from tinyq.plan import default_plan
    from tinyq.qat import load_model, quantize_model

    teacher = load_model(model_path)
    x = np.random.default_rng(0).random((batch, *teacher.input_shape[1:])).astype(np.float32)
    y = np.random.default_rng(1).integers(0, teacher.output_shape[-1], batch)
    models = {"tfmot-default-8bit": tfmot.quantization.keras.quantize_model(teacher)}
    for m in methods:
        models[m] = quantize_model(teacher, default_plan(teacher, bits, m), calibration=x)
    for model in models.values():
        model.compile(keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy")
        for _ in range(3):  # trace and warm up
            model.train_on_batch(x, y)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(x, y)
            times[name].append((time.perf_counter() - t0) / steps)
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--vww", required=True)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--bits", default="2,4")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-step-times", action="store_true")
    parser.add_argument("--out", default="bench-methods")
    args = parser.parse_args()
    methods = args.methods.split(",")
    bits = [int(b) for b in args.bits.split(",")]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    lines = []
    if not args.skip_accuracy:
        rows = [accuracy_row(args, m, b) for b in bits for m in methods]
        Path(args.out, "accuracy.json").write_text(json.dumps(rows, indent=2) + "\n")
        lines += ["| bits | method | vww-dev TFLM | vs float | held-out agreement | file bytes |",
                  "|---|---|---|---|---|---|",
                  f"| float | `{Path(args.model).name}` | {100 * rows[0]['float_vww_dev']:.1f}% (Keras) | | | |"]
        lines += [f"| {r['bits']} | {r['method']} | {100 * r['vww_dev_tflm']:.1f}% | "
                  f"{100 * (r['vww_dev_tflm'] - r['float_vww_dev']):+.1f} | {100 * r['agreement_held_out']:.1f}% | "
                  f"{r['file_bytes']:,} |" for r in rows]
        print("\n".join(lines), flush=True)
        Path(args.out, "results.md").write_text("\n".join(lines) + "\n")
    if args.skip_step_times:
        return
    times = step_times(args.model, [m for m in methods if "/" not in m], bits[0])
    Path(args.out, "step_times.json").write_text(json.dumps(times, indent=2) + "\n")
    base = times["tfmot-default-8bit"]
    lines += ["", f"| QAT step ({bits[0]}-bit weights, batch 64) | seconds | vs TFMOT default 8-bit QAT |",
              "|---|---|---|"]
    lines += [f"| {name} | {t:.3f} | {t / base:.2f}x |" for name, t in times.items()]
    text = "\n".join(lines)
    print(text)
    Path(args.out, "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
