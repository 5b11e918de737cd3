"""Benchmark: float, 8, 4 and 2 bits on people96, measured on people96/test AND vww-dev.

Trains one float model and QAT at 8 bits from it, then QAT at 4 and 2 bits from the same
float model (``--init``), so rows differ only in weight bits. Accuracy in Keras, LiteRT (no
XNNPACK, reference kernels) and TFLM; file, packed-weight and arena bytes; QAT epoch time relative to float,
measured in the same process. Prints a markdown table and writes it with a JSON beside.

    python benchmarks/bench_pipeline.py --data ../shared/data/people96 --vww ../shared/data/vww-dev \\
        --epochs 20 --qat-epochs 8 --out bench-runs
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from tinyq.verify import check, load_eval_data
from tinyq.contract import InputContract
from tinyq.tflite.breakdown import inspect_model
from tinyq.qat import load_model
from tinyq.pipeline.train import TrainConfig, train
from tinyq.fit import evaluate_keras
from tinyq.logs import log_stderr


def float_row(run: Path, sets: dict[str, Path]) -> dict:
    """The float model: Keras, and as a float .tflite in LiteRT and TFLM."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from tflite_micro import runtime

    from tinyq._tf import tf

    config = json.loads((run / "config.json").read_text())
    contract = InputContract.from_dict(config["contract"])
    model = load_model(run / "float.h5")
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    row = {"bits": "float", "file_bytes": len(tflite), "weight_bytes": 4 * model.count_params()}
    for name, folder in sets.items():
        data = load_eval_data(folder, contract, None, log_stderr)
        x = contract.to_float(data.x)
        row[f"{name}_keras"] = float((evaluate_keras(model, data, contract).argmax(1) == data.y).mean())
        lite = Interpreter(model_content=tflite,
                           experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        lite.allocate_tensors()
        micro = runtime.Interpreter.from_bytes(tflite, arena_size=4 << 20)
        preds = {"litert": [], "tflm": []}
        for xi in x:
            lite.set_tensor(lite.get_input_details()[0]["index"], xi[None])
            lite.invoke()
            preds["litert"].append(lite.get_tensor(lite.get_output_details()[0]["index"])[0].argmax())
            micro.set_input(xi[None], 0)
            micro.invoke()
            preds["tflm"].append(np.array(micro.get_output(0))[0].argmax())
        for rt, p in preds.items():
            row[f"{name}_{rt}"] = float((np.array(p) == data.y).mean())
    return row


def quant_row(run: Path, bits: int, sets: dict[str, Path]) -> dict:
    tflite = run / "model.tflite"
    info = inspect_model(tflite)
    row = {"bits": bits, "file_bytes": info["file_bytes"], "weight_bytes": info["packed_weight_bytes"]}
    for name, folder in sets.items():
        result = check(tflite, folder, log=log_stderr)
        row[f"{name}_keras"] = result["keras"]["accuracy"]
        row[f"{name}_litert"] = result["litert"].get("accuracy")
        row[f"{name}_tflm"] = result["tflm"]["accuracy"]
        row["arena_bytes"] = result["tflm"]["arena_bytes"]
        if "litert_vs_tflm_max_abs_diff" in result:
            row["litert_vs_tflm_max_abs_diff"] = max(row.get("litert_vs_tflm_max_abs_diff", 0),
                                                     result["litert_vs_tflm_max_abs_diff"])
    return row


def epoch_ratio(run: Path, float_run: Path) -> float:
    """Mean QAT epoch time over mean float epoch time, first epoch (tracing) excluded."""
    qat = [e["seconds"] for e in json.loads((run / "history.json").read_text())["qat"]]
    flt = [e["seconds"] for e in json.loads((float_run / "history.json").read_text())["float"]]
    return float(np.mean(qat[1:] or qat) / np.mean(flt[1:] or flt))


def fmt(v, column: str = "") -> str:
    if v is None:
        return "n/a"
    if column.endswith("_vs_float"):
        return f"{v:.2f}x"
    if isinstance(v, float):
        return f"{100 * v:.1f}%"
    return f"{v:,}" if isinstance(v, int) else str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--vww", required=True)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--qat-epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench-runs")
    args = ap.parse_args(argv)
    out = Path(args.out)
    sets = {"people96_test": Path(args.data) / "test", "vww_dev": Path(args.vww)}
    t0 = time.time()
    common = dict(data=args.data, epochs=args.epochs, qat_epochs=args.qat_epochs, seed=args.seed)
    runs = {8: train(TrainConfig(bits=8, from_scratch=True, **common), out / "w8", resume=(out / "w8").exists())}
    for bits in (4, 2):
        runs[bits] = train(TrainConfig(bits=bits, init=str(out / "w8" / "float.h5"), **common), out / f"w{bits}",
                           resume=(out / f"w{bits}").exists())
    rows = [float_row(out / "w8", sets)]
    for bits in (8, 4, 2):
        row = quant_row(out / f"w{bits}", bits, sets)
        row["qat_epoch_time_vs_float"] = epoch_ratio(out / f"w{bits}", out / "w8")
        rows.append(row)
    cols = ["bits", "people96_test_keras", "people96_test_litert", "people96_test_tflm", "vww_dev_keras",
            "vww_dev_litert", "vww_dev_tflm", "file_bytes", "weight_bytes", "arena_bytes",
            "litert_vs_tflm_max_abs_diff", "qat_epoch_time_vs_float"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c), c) for c in cols) + " |" for r in rows]
    table = "\n".join(lines)
    command = "python benchmarks/bench_pipeline.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(table)
    print(f"\n{command}\n({time.time() - t0:.0f}s)")
    (out / "bench.md").write_text(table + f"\n\n`{command}`\n")
    (out / "bench.json").write_text(json.dumps({"rows": rows, "command": command}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
