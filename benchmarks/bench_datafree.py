"""Benchmark: quantizing the shipped person detector with no data, by where its images come from.

The README's first command has no data folder. Its images are either generated from the
model's batch-norm statistics (tinyq.data.invert, the default) or drawn figures
(tinyq.data.synthetic); each source gives the same number of images to the same job
(``--size-budget``, distillation only, the default epochs for generated data), and each file
is measured in TFLM on ``--vww``, images none of the runs saw. Seeds change the images, the
split and the training order.

    python benchmarks/bench_datafree.py --vww ../shared/data/vww-dev --size-budget 40KB --seeds 0,1 \\
        --out bench-datafree
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from PIL import Image

from tinyq import recipes
from tinyq.data.synthetic import synthetic
from tinyq.logs import log_stderr
from tinyq.mixed.budget import parse_size
from tinyq.pipeline.options import QuantizeJob
from tinyq.pipeline.quantize import quantize
from tinyq.report import write_report

SOURCES = ("generated", "figures")


def figures_folder(root: Path, n: int, seed: int) -> Path:
    """``n`` drawn figures as image files, unlabelled (the float model labels them, as for generated images)."""
    folder = root / f"figures-{n}-s{seed}"
    if not folder.exists():
        images = synthetic(n, 96, 3, seed)
        tmp = folder.with_suffix(".tmp")
        (tmp / "all").mkdir(parents=True, exist_ok=True)
        for i, x in enumerate(images.x):
            Image.fromarray(x).save(tmp / "all" / f"{i:05d}.png")
        tmp.rename(folder)
    return folder


def run_row(args, source: str, seed: int) -> dict:
    out = Path(args.out) / f"{source}-s{seed}"
    model = str(recipes.get("person-detect").pretrained_path)
    data = None if source == "generated" else str(figures_folder(Path(args.out), args.images, seed))
    job = QuantizeJob(model=model, data=data, unlabeled=data is not None, generated_images=args.images,
                      epochs=QuantizeJob(model=model).epochs, bits=args.bits, seed=seed,
                      size_budget=parse_size(args.size_budget) if args.size_budget else None)
    t0 = time.time()
    if not (out / "model.tflite").exists():
        quantize(job, out, resume=(out / "config.json").exists(), log=log_stderr)
    minutes = (time.time() - t0) / 60
    report = write_report(out, args.vww, log=log_stderr)
    this = next(p for p in report["accuracy_vs_size"] if p["model"] == "this run" and p["data"] == args.vww)
    float_ = next(p for p in report["accuracy_vs_size"] if p["model"] == "float original" and p["data"] == args.vww)
    return {"source": source, "seed": seed, "images": args.images, "epochs": job.epochs,
            "vww_dev_tflm": this["accuracy"], "float_vww_dev": float_["accuracy"], "file_bytes": this["bytes"],
            "held_out_agreement": report["metrics"].get("tflm_test_agreement"), "minutes": round(minutes, 1),
            "run": str(out)}


def table(rows: list[dict]) -> str:
    lines = ["| images from | seed | vww-dev TFLM | vs float | held-out agreement | file bytes | minutes |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        agree = "" if r["held_out_agreement"] is None else f"{100 * r['held_out_agreement']:.1f}%"
        lines.append(f"| {r['source']} ({r['images']}, {r['epochs']} epochs) | {r['seed']} | "
                     f"{100 * r['vww_dev_tflm']:.1f}% | {100 * (r['vww_dev_tflm'] - r['float_vww_dev']):+.1f} | "
                     f"{agree} | {r['file_bytes']:,} | {r['minutes']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vww", required=True, help="held-out images in the VWW layout (never trained on)")
    ap.add_argument("--size-budget", default="40KB")
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--images", type=int, default=QuantizeJob.generated_images)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--sources", default=",".join(SOURCES))
    ap.add_argument("--out", default="bench-datafree")
    args = ap.parse_args(argv)
    rows = [run_row(args, source, int(seed)) for source in args.sources.split(",") for seed in args.seeds.split(",")]
    Path(args.out, "rows.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
