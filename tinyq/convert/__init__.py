"""Conversion: TFLite flatbuffers by bits, LUT compression, reading flatbuffers."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from tinyq.contract import InputContract
from tinyq.errors import TinyqError
from tinyq.runfolder import Run, atomic_path, write_bytes


def save_representative(run: Run, pixels: np.ndarray, n: int = 200, seed: int = 0) -> None:
    """Keep a seeded sample of training pixels in the run, so ``tinyq convert RUN`` can calibrate."""
    rng = np.random.default_rng(seed)
    sample = pixels[np.sort(rng.choice(len(pixels), size=min(n, len(pixels)), replace=False))]
    with atomic_path(run / "representative.npy") as tmp:
        np.save(tmp, sample)


def convert_run(run: Run | str | Path, storage_bits: int | None = None, out: str | Path | None = None,
                representative: np.ndarray | None = None, log: Callable[[str], None] = lambda m: None) -> Path:
    """Convert the run's QAT model to ``out`` (default ``RUN/model.tflite``)."""
    from tinyq.convert.converter import convert
    from tinyq.qat import load_model

    run = (run if isinstance(run, Run) else Run(run)).require()
    config = run.config()
    trained_bits = int(config["train"]["bits"])
    if storage_bits is not None and storage_bits < trained_bits:
        raise TinyqError(f"--bits {storage_bits} is below the {trained_bits} bits {str(run.path)!r} was trained at; "
                         f"convert with --bits {trained_bits} or more, or train again at {storage_bits} bits")
    converter_ptq = config["train"].get("ptq") == "converter"
    source = run.float_model if converter_ptq else run.model
    if not source.exists():
        raise TinyqError(f"{str(run.path)!r} has no {source.name}; training did not finish: run it again with --resume")
    contract = InputContract.from_dict(config["contract"])
    if representative is None:
        rep_path = run / "representative.npy"
        if not rep_path.exists():
            raise TinyqError(f"{str(run.path)!r} has no representative.npy for calibration; train again")
        representative = np.load(rep_path)
    else:
        save_representative(run, representative)
    # converter PTQ: the float model goes to the converter, which picks every scale itself
    data = convert(load_model(source), representative, contract, storage_bits, log,
                   allow_float=bool(config["train"].get("allow_float")))
    target = Path(out) if out is not None else run.tflite
    write_bytes(target, data)
    log(f"wrote {target} ({len(data):,} bytes)")
    return target
