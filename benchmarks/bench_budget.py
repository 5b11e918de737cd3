"""Benchmark: vww_96.h5 under flash budgets against uniform 2, 4 and 8 bits, on vww-dev in TFLM.

Each row is one ``tinyq quantize MODEL --unlabeled`` run on the train split of ``--data``
(the float model supervises), either at uniform ``--bits`` (first conv, depthwise convs and
classifier at 8) or with ``--size-budget`` (every layer chooses 2, 4 or 8 bits by Hutchinson
sensitivity and the exact knapsack, checked on the real, compacted file). Columns: file bytes,
file / packed weight bytes, TFLM arena, vww-dev accuracy in TFLM, the float model (Keras) and
the MLPerf int8 reference file (TFLM) on the same images. A budget below the smallest file the
model makes is recorded as such.

    python benchmarks/bench_budget.py --model ../shared/models/vww_96.h5 --data ../shared/data/people96 \\
        --vww ../shared/data/vww-dev --reference ../shared/models/vww_96_int8.tflite \\
        --budgets 48,64,96,128,200 --uniform 2,4,8 --epochs 3 --out bench-budget
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tinyq.runtimes import arena_bytes
from tinyq.tflite.breakdown import inspect_model
from tinyq.errors import TinyqError
from tinyq.pipeline.quantize import QuantizeJob, quantize
from tinyq.report import write_report
from tinyq.logs import log_stderr


def row(args, name: str, **fields) -> dict:
    out = Path(args.out) / name
    job = QuantizeJob(model=args.model, data=args.data, unlabeled=True, epochs=args.epochs, limit=args.limit,
                      seed=args.seed, **fields)
    try:
        if not (out / "model.tflite").exists():
            quantize(job, out, resume=(out / "config.json").exists(), log=log_stderr)
    except TinyqError as e:
        return {"row": name, "error": str(e)}
    report = write_report(out, args.vww, references=[args.reference] if args.reference else [], log=log_stderr)
    points = {p["model"]: p for p in report["accuracy_vs_size"] if p["data"] == args.vww}
    info = inspect_model(out / "model.tflite")
    data = (out / "model.tflite").read_bytes()
    result = {"row": name, "file_bytes": len(data), "ratio": info["file_over_packed_weights"],
              "arena_bytes": arena_bytes(data), "vww_dev_tflm": points["this run"]["accuracy"],
              "float_vww_dev": points["float original"]["accuracy"],
              "bits": sorted({t["bits"] for t in info["tensors"] if t["kind"] == "weights"})}
    if args.reference:
        ref = points[Path(args.reference).name]
        result.update(reference_bytes=ref["bytes"], reference_vww_dev=ref["accuracy"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--vww", required=True)
    parser.add_argument("--reference", default=None)
    parser.add_argument("--budgets", default="48,64,96,128,200", help="KB (1024 bytes)")
    parser.add_argument("--uniform", default="2,4,8")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-budget")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = [row(args, f"uniform-w{b}", bits=int(b)) for b in args.uniform.split(",") if b]
    rows += [row(args, f"budget-{kb}KB", bits=8, size_budget=int(kb) * 1024) for kb in args.budgets.split(",") if kb]
    Path(args.out, "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| run | bits in file | file bytes | file / packed weights | arena bytes | vww-dev TFLM | vs float |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | | {r['error']} | | | | |")
            continue
        lines.append(f"| {r['row']} | {', '.join(map(str, r['bits']))} | {r['file_bytes']:,} | {r['ratio']} | "
                     f"{r['arena_bytes']:,} | {100 * r['vww_dev_tflm']:.1f}% | "
                     f"{100 * (r['vww_dev_tflm'] - r['float_vww_dev']):+.1f} |")
    ok = [r for r in rows if "error" not in r]
    if ok:
        lines.append(f"\nfloat (Keras) {100 * ok[0]['float_vww_dev']:.1f}% on vww-dev"
                     + (f"; reference {Path(args.reference).name}: {ok[0]['reference_bytes']:,} bytes, "
                        f"{100 * ok[0]['reference_vww_dev']:.1f}% (TFLM)" if args.reference else ""))
    text = "\n".join(lines)
    print(text)
    Path(args.out, "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
