"""Benchmark: the same training on one device and mirrored over two logical CPU devices, on vww-dev.

``tinyq train person-detect --data DATA --bits B --seed S`` with and without ``--distribute
mirrored`` (``TINYQ_CPU_REPLICAS=2``, each replica half of every batch), for each seed; every
file measured in TFLM on ``--vww`` (images no run saw) and, beside it, on the held-out test split of
``--data`` (the run's own figure). The target: mirrored within the seeds' spread of one device. Runs with a ``model.tflite`` are measured, not trained again.

    python benchmarks/bench_distribute.py --data PACK_OR_FOLDER --vww ../shared/data/vww-dev \\
        --bits 4 --seeds 0,1 --out bench-distribute
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--vww", required=True)
    p.add_argument("--bits", default="4")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    rows = []
    for seed in args.seeds.split(","):
        for mode in ("one device", "mirrored x2"):
            run = out / f"{'one' if mode == 'one device' else 'mirrored2'}-s{seed}"
            seconds = None
            if not (run / "model.tflite").exists():
                cmd = ["tinyq", "train", "person-detect", "--data", args.data, "--bits", args.bits, "--seed", seed,
                       "--out", str(run), "--quiet"] + (["--distribute", "mirrored"] if mode != "one device" else [])
                if (run / "config.json").exists():
                    cmd.append("--resume")
                t0 = time.time()
                subprocess.run(cmd, check=True, env={**os.environ, "TINYQ_CPU_REPLICAS": "2"})
                seconds = time.time() - t0
            check = json.loads(subprocess.run(["tinyq", "check", str(run / "model.tflite"), "--data", args.vww,
                                               "--json"], check=True, capture_output=True, text=True).stdout)
            held_out = json.loads((run / "metrics.json").read_text())["tflm_test_accuracy"]
            rows.append({"seed": int(seed), "mode": mode, "vww_dev_tflm": check["tflm"]["accuracy"],
                         "data_test_tflm": held_out, "bytes": check["file_bytes"], "train_seconds": seconds})
    lines = ["| mode | seed | vww-dev (TFLM) | --data's test split (TFLM) | bytes | train seconds |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['mode']} | {r['seed']} | {100 * r['vww_dev_tflm']:.1f}% | {100 * r['data_test_tflm']:.1f}% | "
              f"{r['bytes']:,} | "
              f"{'' if r['train_seconds'] is None else round(r['train_seconds'])} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    (out / "distribute.md").write_text(table + f"\n\n`python benchmarks/bench_distribute.py {' '.join(sys.argv[1:])}`\n")


if __name__ == "__main__":
    main()
