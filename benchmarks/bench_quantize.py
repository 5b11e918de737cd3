"""Benchmark: a float model (default vww_96.h5) to 8, 4 and 2 bits by QAT with distillation
(unlabelled and labelled) and by post-training quantization, measured on vww-dev in TFLM.

Every row is one ``tinyq quantize`` run on the same images (the train split of ``--data``;
``unlabeled`` ignores its labels, the float model alone supervises), then ``tinyq report``
against ``--vww`` with the reference file, so each run folder also holds its report.

    python benchmarks/bench_quantize.py --model ../shared/models/vww_96.h5 --data ../shared/data/people96 \\
        --vww ../shared/data/vww-dev --reference ../shared/models/vww_96_int8.tflite --epochs 3 --out bench-quantize
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tinyq.pipeline.quantize import QuantizeJob, quantize
from tinyq.report import write_report
from tinyq.logs import log_stderr


MODES = {  # name -> QuantizeJob fields
    "qat, unlabelled": {"unlabeled": True},
    "qat, labelled": {"unlabeled": False, "distill": 0.5},
    "ptq": {},
}
TARGETS = {8: 0.5, 4: 1.0, 2: 3.0}  # points below float on vww-dev (issue 3)


def run_row(args, bits: int, mode: str) -> dict:
    out = Path(args.out) / f"w{bits}-{mode.replace(', ', '-')}"
    fields = dict(MODES[mode])
    if mode == "ptq":
        fields["ptq"] = "converter" if bits == 8 else "tinyq"
    job = QuantizeJob(model=args.model, data=args.data, bits=bits, epochs=args.epochs, limit=args.limit,
                      seed=args.seed, **fields)
    t0 = time.time()
    if not (out / "model.tflite").exists():
        quantize(job, out, resume=(out / "config.json").exists(), log=log_stderr)
    minutes = (time.time() - t0) / 60
    report = write_report(out, args.vww, [args.reference] if args.reference else [], log=log_stderr)
    points = {(p["model"], p["data"]): p for p in report["accuracy_vs_size"]}
    this = points[("this run", args.vww)]
    return {"bits": bits, "mode": mode + (f" ({fields['ptq']})" if "ptq" in fields else ""),
            "vww_dev_tflm": this["accuracy"], "file_bytes": this["bytes"],
            "held_out_tflm": report["metrics"].get("tflm_test_accuracy", report["metrics"].get("tflm_test_agreement")),
            "float_vww_dev": points[("float original", args.vww)]["accuracy"],
            "reference": {name: p for (name, data), p in points.items()
                          if data == args.vww and name not in ("this run", "float original")},
            "minutes": round(minutes, 1), "run": str(out), "model": Path(args.model).name}


def table(rows: list[dict]) -> str:
    first = rows[0]
    lines = ["| weights | how | vww-dev TFLM | vs float | target | held-out agreement / accuracy | file bytes |",
             "|---|---|---|---|---|---|---|",
             f"| float | `{first['model']}` | {100 * first['float_vww_dev']:.1f}% (Keras) | | | | |"]
    for name, p in first["reference"].items():
        lines.append(f"| int8 | {name} | {100 * p['accuracy']:.1f}% | "
                     f"{100 * (p['accuracy'] - first['float_vww_dev']):+.1f} | | | {p['bytes']:,} |")
    for r in rows:
        delta = 100 * (r["vww_dev_tflm"] - r["float_vww_dev"])
        target = TARGETS.get(r["bits"])
        held = "n/a" if r["held_out_tflm"] is None else f"{100 * r['held_out_tflm']:.1f}%"
        lines.append(f"| {r['bits']}-bit | {r['mode']} | {100 * r['vww_dev_tflm']:.1f}% | {delta:+.1f} | "
                     f"{'met' if -delta <= target else f'missed by {-delta - target:.1f}'} (-{target}) | {held} | "
                     f"{r['file_bytes']:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="training images (VWW layout)")
    parser.add_argument("--vww", required=True, help="the real task, measured on, never trained on")
    parser.add_argument("--reference", default=None, help="an int8 .tflite to compare with, e.g. MLPerf's")
    parser.add_argument("--bits", default="8,4,2")
    parser.add_argument("--modes", default=",".join(m.replace(", ", "-") for m in MODES))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-quantize")
    args = parser.parse_args()
    modes = [m for m in MODES if m.replace(", ", "-") in args.modes.split(",")]
    rows = [run_row(args, int(b), m) for b in args.bits.split(",") for m in modes]
    text = table(rows)
    print(text)
    Path(args.out, "results.md").write_text(text + "\n")
    Path(args.out, "results.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
