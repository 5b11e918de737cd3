"""Benchmark (issue 4, table a): every quantization method on the real task, and its QAT step time.

(a) ``tinyq quantize MODEL --method M --bits B --seed S`` for each method, bit width and seed,
distilled on the train split of ``--data`` (unlabelled: the float model alone supervises),
accuracy on ``--vww`` in TFLM (mean over seeds, each seed's figure beside), Keras/TFLM top-1
agreement, agreement with the float model on the held-out split, file bytes. Next to them:
the float model, tinyq's 8-bit ``ste``, TFMOT's default 8-bit QAT of the same model distilled
the same way (same images, epochs, lr, batch; outputs only, as TFMOT has no feature
matching), and with ``--budgets`` mixed-precision rows (``--size-budget``) at given file sizes.
(b) QAT step time of each method relative to TFMOT's default 8-bit QAT on the same model and
batch, measured in this process, alternating between the two to share the machine's noise.

    python benchmarks/bench_methods.py --model ../shared/models/vww_96.h5 --data ../shared/data/people96 \\
        --vww ../shared/data/vww-dev --bits 2,4 --seeds 0,1 --budgets 37952 --epochs 3 --out bench-methods

Rows whose run folder holds a ``model.tflite`` are measured, not trained again, and a row
interrupted mid-training resumes from its last epoch, so a sweep run again continues where it
stopped. ``--workers N`` runs the grid's rows as independent jobs on N processes; ``--shard i/n``
runs every n-th row from the i-th, so n machines sharing ``--out`` run the grid once between
them, and ``--report`` then prints the whole table (benchmarks/sweep.py).
``--methods`` takes ``cpq/learn`` for CPQ with ``--learn-bits`` (a learned width per layer up to ``--bits``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from tinyq.verify import check
from tinyq.pipeline.quantize import QuantizeJob, quantize
from tinyq.logs import log_stderr

sys.path.insert(0, str(Path(__file__).parent))
import sweep  # noqa: E402  (benchmarks/sweep.py)


METHODS = ("ste", "qgt", "daq", "qgt+daq", "sat", "cpq", "levels")


def measured(folder: Path, tflite: Path, vww: str) -> dict:
    """vww-dev in TFLM (and Keras/TFLM agreement where a QAT model exists), file bytes, held-out agreement."""
    cache = folder / "bench_vww.json"
    if cache.exists():
        return json.loads(cache.read_text())
    result = check(tflite, vww, log=log_stderr)
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    row = {"vww_dev_tflm": result["tflm"]["accuracy"], "file_bytes": result["file_bytes"],
           "keras_tflm_agreement": result["tflm"].get("agreement_with_keras"),
           "held_out_agreement": metrics.get("tflm_test_agreement", metrics.get("tflm_test_accuracy"))}
    cache.write_text(json.dumps(row, indent=2) + "\n")
    return row


def tinyq_row(args, method: str, bits: int, seed: int, budget: int | None = None, train: bool = True,
              act_bits: int | None = None) -> dict | None:
    """One run of ``tinyq quantize``; a method written ``cpq/learn`` adds ``--learn-bits``; activations
    at ``act_bits`` (default ``--act-bits``; budget rows 8)."""
    method, _, learn = method.partition("/")
    act_bits = 8 if budget is not None else args.act_bits if act_bits is None else act_bits
    acts = f"-a{act_bits}" if act_bits < 8 else ""
    name = f"w{bits}-{method.replace('+', '-')}{'-learn' if learn else ''}{acts}" if budget is None else f"budget{budget}"
    folder = Path(args.out) / f"{name}-s{seed}"
    if not (folder / "model.tflite").exists():
        if not train:
            return None
        job = QuantizeJob(model=args.model, data=args.data, bits=bits, method=method, unlabeled=True,
                          epochs=args.epochs, limit=args.limit, seed=seed, learn_bits=bool(learn), size_budget=budget,
                          act_bits=act_bits)
        quantize(job, folder, resume=(folder / "config.json").exists(), log=log_stderr)
    label = f"budget {budget:,} bytes (2/4/8 mixed)" if budget else \
        method + (" --learn-bits" if learn else "") + (f" --act-bits {act_bits}" if acts else "")
    return {"bits": "mixed" if budget else bits, "method": label, "seed": seed,
            **measured(folder, folder / "model.tflite", args.vww)}


def tfmot_row(args, seed: int, train: bool = True) -> dict | None:
    """TFMOT's ``quantize_model`` (default 8-bit QAT) of the float model, distilled like tinyq's rows."""
    from tinyq._tf import keras, tf, tfmot
    from tinyq.data import load_splits
    from tinyq.data.pipeline import training_batches
    from tinyq.distill import Distiller
    from tinyq.qat import load_model
    from tinyq.graph import contract_of

    folder = Path(args.out) / f"tfmot-default-8bit-s{seed}"
    target = folder / "model.tflite"
    if not target.exists():
        if not train:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        teacher = load_model(args.model)
        contract = contract_of(teacher, (0.0, 1.0), None)
        train_set = load_splits(args.data, contract.resolution, contract.channels, seed, args.limit)["train"]
        keras.utils.set_random_seed(seed)
        model = tfmot.quantization.keras.quantize_model(teacher)
        steps = -(-len(train_set) // QuantizeJob.batch)
        fitted = Distiller(model, load_model(args.model), alpha=1.0)
        fitted.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
            QuantizeJob.lr, args.epochs * steps, alpha=0.05)))
        labels = np.zeros(len(train_set), np.int32)  # unused: alpha 1 distils the outputs alone
        fitted.fit(training_batches(train_set.x, labels, contract, QuantizeJob.batch, seed, args.epochs),
                   epochs=args.epochs, steps_per_epoch=steps, verbose=2)
        rep = contract.to_float(train_set.x[np.random.default_rng(seed).permutation(len(train_set))[:200]])
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x[None]] for x in rep)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
        target.write_bytes(converter.convert())
    return {"bits": 8, "method": "TFMOT default QAT (distilled, outputs only)", "seed": seed,
            **measured(folder, target, args.vww)}


def float_vww(model_path: str, vww: str) -> float:
    from tinyq.verify import load_eval_data
    from tinyq.qat import load_model
    from tinyq.graph import contract_of
    from tinyq.fit import evaluate_keras

    model = load_model(model_path)
    contract = contract_of(model, (0.0, 1.0), None)
    data = load_eval_data(vww, contract, None, log_stderr)
    return float((evaluate_keras(model, data, contract).argmax(1) == data.y).mean())


def table(rows: list[dict], float_acc: float, model_name: str) -> str:
    """One line per (bits, method): the mean over its seeds, each seed's vww-dev figure beside."""
    def pct(values):
        values = [v for v in values if v is not None]
        return f"{100 * np.mean(values):.1f}%" if values else ""

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((str(r["bits"]), r["method"]), []).append(r)
    lines = ["| bits | method | vww-dev TFLM, mean | vs float | per seed | Keras/TFLM agreement (vww-dev) "
             "| held-out agreement with float | file bytes |",
             "|---|---|---:|---:|---|---:|---:|---:|",
             f"| float | `{model_name}` | {100 * float_acc:.1f}% (Keras) | | | | | |"]
    for (bits, method), rs in groups.items():
        acc = [r["vww_dev_tflm"] for r in rs]
        seeds = ", ".join(f"s{r['seed']} {100 * r['vww_dev_tflm']:.1f}%" for r in rs)
        sizes = sorted({r["file_bytes"] for r in rs})
        lines.append(f"| {bits} | {method} | {pct(acc)} | {100 * (np.mean(acc) - float_acc):+.1f} | {seeds} | "
                     f"{pct(r['keras_tflm_agreement'] for r in rs)} | {pct(r['held_out_agreement'] for r in rs)} | "
                     f"{' / '.join(f'{s:,}' for s in sizes)} |")
    return "\n".join(lines)


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


def grid(args, methods, bits, seeds, budgets) -> list[tuple]:
    """Every row of the table as a job: ("ste8", seed), ("tfmot", seed), ("row", method, bits, seed), ("budget", b, seed)."""
    jobs = []
    for seed in seeds:
        if not args.skip_baselines:
            jobs += [("ste8", seed), ("tfmot", seed)]
        jobs += [("row", m, b, seed) for b in bits for m in methods]
        jobs += [("budget", b, seed) for b in budgets]
    return jobs


def run_job(args, job: tuple) -> dict | None:
    """One job of :func:`grid`: trained (or resumed) unless ``--report``, then measured."""
    train = not args.report
    if job[0] == "ste8":
        return tinyq_row(args, "ste", 8, job[1], train=train, act_bits=8)
    if job[0] == "tfmot":
        return tfmot_row(args, job[1], train=train)
    if job[0] == "budget":
        return tinyq_row(args, "ste", 8, job[2], budget=job[1], train=train)
    return tinyq_row(args, job[1], job[2], job[3], train=train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--vww", required=True)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--bits", default="2,4")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--budgets", default="", help="file sizes in bytes for --size-budget rows, e.g. 37952")
    parser.add_argument("--act-bits", type=int, default=8, help="activation bits of the --methods rows (below 8: pact, cgpact)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--report", action="store_true", help="measure and print the rows that exist; train none")
    parser.add_argument("--skip-baselines", action="store_true", help="no 8-bit ste and TFMOT rows")
    parser.add_argument("--skip-step-times", action="store_true")
    parser.add_argument("--out", default="bench-methods")
    parser.add_argument("--workers", type=int, default=1, help="rows run as independent jobs on this many processes")
    parser.add_argument("--shard", default=None, help="i/n: this machine runs every n-th row from the i-th")
    args = parser.parse_args()
    methods = args.methods.split(",")
    bits = [int(b) for b in args.bits.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = [int(b) for b in args.budgets.split(",") if b]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    jobs = sweep.shard(args.shard, grid(args, methods, bits, seeds, budgets))
    import functools

    rows = sweep.run(functools.partial(run_job, args), jobs, args.workers, log_stderr)
    rows = [r for r in rows if r is not None]
    Path(args.out, "rows.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = table(rows, float_vww(args.model, args.vww), Path(args.model).name)
    if not args.skip_step_times and not args.report and not args.shard:
        times = step_times(args.model, [m for m in methods if "/" not in m], bits[0])
        Path(args.out, "step_times.json").write_text(json.dumps(times, indent=2) + "\n")
        base = times["tfmot-default-8bit"]
        text += "\n\n" + "\n".join([f"| QAT step ({bits[0]}-bit weights, batch 64) | seconds | vs TFMOT default 8-bit QAT |",
                                    "|---|---|---|"] + [f"| {n} | {t:.3f} | {t / base:.2f}x |" for n, t in times.items()])
    command = "python benchmarks/bench_methods.py " + " ".join(sys.argv[1:])
    print(f"{text}\n\n{command}")
    Path(args.out, "results.md").write_text(f"{text}\n\n`{command}`\n")


if __name__ == "__main__":
    main()
