"""Benchmark: the input pipeline's images/s against the QAT step's, side by side in one process.

Packs ``--data`` (an image folder) into shards once, then times on this machine:

- the streamed pipeline ``--data SHARDS`` trains from (shards interleaved, JPEG decode,
  shuffle, augmentation, batching), iterated alone;
- the in-memory pipeline of an image folder (the images already decoded), iterated alone;
- a QAT step of the shipped person detector at 4 bits (the default plan), on batches already
  in memory, so the input costs it nothing.

The target: the streamed pipeline at least 3x the QAT step, so input never limits training.

    python benchmarks/bench_input.py --data ../shared/data/people96 --out bench-input
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def images_per_second(batches, n_batches: int, batch: int, warmup: int = 5) -> float:
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="an image folder (person/, non_person/, optionally in splits)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=60, help="batches timed per pipeline")
    p.add_argument("--steps", type=int, default=30, help="QAT steps timed")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    from tinyq import recipes
    from tinyq._tf import keras, tf
    from tinyq.data.folder import load_splits
    from tinyq.data.pipeline import training_batches
    from tinyq.data.shards import is_shards, load_shard_splits, pack
    from tinyq.logs import log_stderr
    from tinyq.plan import default_plan
    from tinyq.qat import load_model, quantize_model

    out = Path(args.out)
    shards = out / "shards"
    if not is_shards(shards):
        pack(args.data, shards, size=96, log=log_stderr)
    recipe = recipes.get("person-detect")
    contract = recipe.contract(3)
    train = load_shard_splits(shards, 96, 3)["train"]
    epochs = -(-(args.batches + 5) * args.batch // len(train)) + 1
    streamed = images_per_second(train.training_batches(contract, args.batch, 0, epochs).as_numpy_iterator(),
                                 args.batches, args.batch)
    folder = load_splits(args.data, 96, 3)["train"]
    in_memory = images_per_second(
        training_batches(folder.x, folder.y, contract, args.batch, 0, epochs).as_numpy_iterator(),
        args.batches, args.batch)

    model = load_model(recipe.pretrained_path)
    x = contract.to_float(folder.x[:512])
    qat = quantize_model(model, default_plan(model, 4), calibration=x[:256])
    qat.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    xb = tf.constant(x[:args.batch])
    yb = tf.constant(folder.y[:args.batch])
    for _ in range(3):
        qat.train_on_batch(xb, yb)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        qat.train_on_batch(xb, yb)
    step = args.steps * args.batch / (time.perf_counter() - t0)

    rows = [("streamed from shards (--data SHARDS)", streamed), ("in memory (--data FOLDER)", in_memory),
            ("QAT step, 4-bit person detector", step)]
    lines = ["| what | images/s | x QAT step |", "|---|---:|---:|"]
    lines += [f"| {name} | {rate:,.0f} | {rate / step:.1f} |" for name, rate in rows]
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "input.md").write_text(table + "\n")
    (out / "input.json").write_text(json.dumps({"batch": args.batch, "streamed": streamed, "in_memory": in_memory,
                                                "qat_step": step, "images": len(train),
                                                "cores": len(np.atleast_1d(tf.config.list_physical_devices("CPU")))},
                                               indent=1))


if __name__ == "__main__":
    main()
