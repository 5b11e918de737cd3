"""Benchmark: tinyq's files of vww_96.h5 and the MLPerf int8 file on emulated Cortex-M boards.

For each file x board x kernel set, ``tinyq device`` builds the firmware against the TFLM tree
and runs ``--limit`` vww-dev images under ``qemu-system-arm -icount shift=0``: outputs identical
to host TFLM, instructions per inference (median; instructions, not cycles), flash split
(model, TFLM + kernels, libc, application; no stdio), arena used and stack. Accuracy is on all
of vww-dev on the host (identical outputs make the device's the same). One row with ``--logs``
shows what TFLM's messages and the C library's printf cost in flash. ``aot`` in ``--kernels``
runs tinyq's ahead-of-time C engine (``tinyq device --engine aot``: no TFLM; its "arena" is its
static activation buffer) on the same files, boards and images.

Files: ``--runs NAME=RUN ...`` (e.g. bench_budget.py's QAT runs), else made here with
``tinyq quantize --ptq tinyq`` (no training: the same widths, ops and sizes as QAT files, lower
accuracy) at uniform 8, 4, 2 bits and ``--size-budget`` 38 KB and 64 KB.

    python benchmarks/bench_device.py --model ../shared/models/vww_96.h5 --data ../shared/data/people96 \\
        --vww ../shared/data/vww-dev --reference ../shared/models/vww_96_int8.tflite \\
        --tflm ../shared/tflm-kit/tflm --boards m4,m55 --out bench-device
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tinyq.api import QuantizeJob, check, log_stderr, quantize, run_on_device
from tinyq.errors import TinyqError

FILES = {"uniform 8": {"bits": 8}, "uniform 4": {"bits": 4}, "uniform 2": {"bits": 2},
         "budget 38 KB": {"bits": 8, "size_budget": 38 * 1024}, "budget 64 KB": {"bits": 8, "size_budget": 64 * 1024}}


def make_files(args) -> dict[str, Path]:
    files = {}
    for name, fields in FILES.items():
        out = Path(args.out) / name.replace(" ", "-")
        if not (out / "model.tflite").exists():
            quantize(QuantizeJob(model=args.model, data=args.data, unlabeled=True, ptq="tinyq", limit=args.limit_data,
                                 seed=0, **fields), out, resume=(out / "config.json").exists(), log=log_stderr)
        files[name] = out
    return files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="vww_96.h5, to make the files (--ptq tinyq)")
    p.add_argument("--data", help="images to calibrate the made files on")
    p.add_argument("--vww", required=True, help="held-out scenes: accuracy on all, device runs on --limit")
    p.add_argument("--reference", default=None, help="the MLPerf int8 .tflite")
    p.add_argument("--runs", nargs="*", default=[], help="NAME=RUN folders instead of making files")
    p.add_argument("--tflm", required=True)
    p.add_argument("--boards", default="m4,m55")
    p.add_argument("--kernels", default="reference,cmsis-nn", help="TFLM kernel sets, and aot for tinyq's engine")
    p.add_argument("--limit", type=int, default=4, help="vww-dev images run on each board")
    p.add_argument("--limit-data", type=int, default=2000)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    files = dict(kv.split("=", 1) for kv in args.runs) if args.runs else make_files(args)
    if args.reference:
        files = {"MLPerf int8": args.reference, **files}
    rows = []
    results = Path(args.out) / "device.json"
    done = {(r["file"], r["board"], r["kernels"], r["logs"]): r for r in
            (json.loads(results.read_text()) if results.exists() else [])}
    for name, source in files.items():
        accuracy = check(source, args.vww, log=log_stderr)["tflm"]["accuracy"]
        configs = [(b, k, False) for b in args.boards.split(",") for k in args.kernels.split(",")]
        if name == "budget 38 KB":
            configs.append(("m4", "cmsis-nn", True))
        for board, kernels, logs in configs:
            key = (name, board, kernels, logs)
            if key not in done:
                try:
                    aot = kernels == "aot"
                    r = run_on_device(source, board, "reference" if aot else kernels, args.tflm, data=args.vww,
                                      limit=args.limit, logs=logs, engine="aot" if aot else "tflm", log=log_stderr)
                except TinyqError as e:
                    r = {"error": str(e)}
                done[key] = {"file": name, "board": board, "kernels": kernels, "logs": logs,
                             "vww_dev_accuracy_host": accuracy, **r}
                results.write_text(json.dumps(list(done.values()), indent=1))
            rows.append(done[key])
    print("| file | bytes | board | kernels | identical | instructions | flash total | model | TFLM+kernels | libc | app "
          "| arena used | stack | RAM (arena + stack) | vww-dev (host) |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['file']} | | {r['board']} | {r['kernels']} | error: {r['error'][:80]} |")
            continue
        f, ram = r["flash_bytes"], r["ram_bytes"]
        print(f"| {r['file']}{' (--logs)' if r['logs'] else ''} | {r['file_bytes']:,} | {r['board']} | {r['kernels']} | "
              f"{r['identical_to_host_tflm']}/{r['n']} | {r['instructions_per_inference']['median'] / 1e6:.2f}M | "
              f"{f['total']:,} | {f['model']:,} | {f['tflm']:,} | {f['libc']:,} | {f['application']:,} | "
              f"{ram['arena_used']:,} | {ram['stack_used']:,} | {ram['arena_used'] + ram['stack_used']:,} | "
              f"{r['vww_dev_accuracy_host']:.1%} |")


if __name__ == "__main__":
    main()
