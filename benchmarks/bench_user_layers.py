"""Benchmark: a model a user trains with tinyq's Keras layers, then deploys with ``tinyq quantize``.

The user's side, as the README shows it: ``quantize_layers`` over the person-detect recipe
(``--bits`` on the pointwise convs, ``--method``), ``model.fit`` on ``--data``/train with
labels, ``model.save("user.h5")``. Then ``tinyq quantize user.h5 --epochs E`` for each ``E`` of
``--deploy-epochs`` (0: ship what was trained). Per deployed file, on ``--data``/test and
``--vww``: the user's Keras model, the file in TFLM, their top-1 agreement, the run's own
Keras/TFLM agreement, file bytes.

    python benchmarks/bench_user_layers.py --data ../shared/data/people96 --vww ../shared/data/vww-dev \\
        --bits 2 --method ste --epochs 8 --deploy-epochs 0,2 --out bench-user
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def train_user_model(data: str, bits: int, method: str, epochs: int, seed: int, path: Path, act_bits: int = 8) -> None:
    from tinyq import optim, recipes
    from tinyq._tf import keras
    from tinyq.data import load_splits
    from tinyq.layers import quantize_layers

    recipe = recipes.get("person-detect")
    keras.utils.set_random_seed(seed)
    model = quantize_layers(recipe.model(), bits=bits, method=method, act_bits=act_bits)
    splits = load_splits(data, recipe.resolution, 3, seed)
    model.compile(optim.Adam(1e-3, relative=optim.step_variables(model)), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(splits["train"].x / 255.0, splits["train"].y, epochs=epochs, batch_size=64,
              validation_data=(splits["val"].x / 255.0, splits["val"].y), verbose=2)
    model.save(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--vww", required=True)
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--method", default="ste")
    p.add_argument("--act-bits", type=int, default=8, help="the PACT layers' bits, with an activation method")
    p.add_argument("--epochs", type=int, default=8, help="the user's model.fit epochs")
    p.add_argument("--deploy-epochs", default="0,2", help="tinyq quantize --epochs, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)

    from tinyq.verify import load_eval_data

    from tinyq.runtimes import model_input, tflm_outputs
    from tinyq.tflite import flatbuffer
    from tinyq.qat import load_model
    from tinyq.pipeline.quantize import QuantizeJob, quantize
    from tinyq.graph import contract_of
    from tinyq.fit import evaluate_keras
    from tinyq.logs import log_stderr

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    user_h5 = out / "user.h5"
    if not user_h5.exists():
        train_user_model(a.data, a.bits, a.method, a.epochs, a.seed, user_h5, a.act_bits)
    user = load_model(user_h5)
    contract = contract_of(user, (0.0, 1.0), None)
    runs = {}
    for e in (int(v) for v in a.deploy_epochs.split(",")):
        run = out / f"deploy-e{e}"
        if not (run / "model.tflite").exists():
            quantize(QuantizeJob(model=str(user_h5), data=a.data, epochs=e, seed=a.seed), run, log=log_stderr)
        runs[e] = run
    print(f"user model: person-detect via quantize_layers, {a.bits}-bit {a.method} (activations {a.act_bits}-bit), "
          f"model.fit {a.epochs} epochs\n")
    print("| images | user's Keras | tinyq quantize --epochs | TFLM | TFLM vs user's model | run's Keras vs TFLM | file bytes |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, folder in (("test", Path(a.data)), ("vww-dev", Path(a.vww))):
        images = load_eval_data(folder, contract, None, lambda m: None)
        by_user = evaluate_keras(user, images, contract).argmax(1)
        for e, run in runs.items():
            data, fb = flatbuffer.read(run / "model.tflite")
            on_board = tflm_outputs(data, model_input(fb, images.x, contract)).argmax(1)
            by_run = evaluate_keras(load_model(run / "model.h5"), images, contract).argmax(1)
            print(f"| {name} ({len(images)}) | {np.mean(by_user == images.y):.1%} | {e} | "
                  f"{np.mean(on_board == images.y):.1%} | {np.mean(on_board == by_user):.1%} | "
                  f"{np.mean(on_board == by_run):.1%} | {len(data):,} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
