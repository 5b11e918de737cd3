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
                representative: np.ndarray | None = None, log: Callable[[str], None] = lambda m: None,
                compact: bool = True, keep_uncompacted: bool = False) -> Path:
    """Convert the run's QAT model to ``out`` (default ``RUN/model.tflite``), compacted unless ``compact=False``."""
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
    model = load_model(source)
    data = convert(model, representative, contract, storage_bits, log,
                   allow_float=bool(config["train"].get("allow_float")))
    target = Path(out) if out is not None else run.tflite
    if compact:
        data = compact_file(data, representative, contract, target, keep_uncompacted, log)
    if not converter_ptq:
        outputs = against_integer_model(model, data, representative, contract, storage_bits, log)
        if target == run.tflite:
            run.update_metrics(integer_check=outputs)
    write_bytes(target, data)
    log(f"wrote {target} ({len(data):,} bytes)")
    return target


def compact_file(data: bytes, representative: np.ndarray, contract: InputContract, target: Path,
                 keep_uncompacted: bool = False, log: Callable[[str], None] = lambda m: None) -> bytes:
    """:func:`tinyq.convert.compact.compact` verified on up to 32 representative images.

    Writes the tensor-name map beside ``target`` (``inspect`` and ``report`` read it) and, with
    ``keep_uncompacted``, the file before compaction as ``X.uncompacted.tflite``.
    """
    from tinyq.convert import flatbuffer
    from tinyq.convert.compact import tensor_names
    from tinyq.runfolder import write_json

    if keep_uncompacted:
        write_bytes(target.with_name(target.stem + ".uncompacted.tflite"), data)
    write_json(flatbuffer.names_path(target), {"tensor_names": tensor_names(data)})
    compacted, record = compact_verified(data, representative, contract, log=log)
    write_json(target.with_name(target.stem + ".compaction.json"), record)
    return compacted


def compact_verified(data: bytes, pixels: np.ndarray, contract: InputContract, n: int = 32,
                     log: Callable[[str], None] = lambda m: None) -> tuple[bytes, dict]:
    """:func:`tinyq.convert.compact.compact`, verified on the first ``n`` of ``pixels`` (uint8 images)."""
    from tinyq.check import model_input
    from tinyq.convert import flatbuffer
    from tinyq.convert.compact import compact

    return compact(data, model_input(flatbuffer.parse(data), pixels[:n], contract), log)


def against_integer_model(qat, data: bytes, pixels: np.ndarray, contract: InputContract,
                          storage_bits: int | None = None, log: Callable[[str], None] = lambda m: None,
                          n: int = 32) -> dict:
    """TFLM's int8 outputs of ``data`` against the QAT model's in integer arithmetic
    (:mod:`tinyq.integer`) on the first ``n`` of ``pixels``: equal on every image for a file
    that computes what was trained.

    Returns ``{images, identical_outputs, agreement_with_tflm, max_abs_diff}``, or ``{skipped}``
    for a model the integer version does not cover (the conversion itself stands).
    """
    from tinyq.check import against_integer, model_input, tflm_outputs
    from tinyq.convert import flatbuffer
    from tinyq.convert.converter import storage
    from tinyq.integer import IntegerModel, NotEmulated

    try:
        with storage(qat, storage_bits):  # the integers as this file stores them
            expected = IntegerModel(qat).predict(contract.to_float(pixels[:n]))
    except NotEmulated as e:
        log(f"convert: outputs not checked against the Keras model's integer arithmetic ({e})")
        return {"skipped": str(e)}
    except Exception as e:  # an advisory check: a gap in tinyq.integer must not cost the user the file
        log(f"warning: the Keras model's integer arithmetic could not be computed ({type(e).__name__}: {e}); "
            "outputs not checked, please report it")
        return {"skipped": f"{type(e).__name__}: {e}"}
    got = tflm_outputs(data, model_input(flatbuffer.parse(data), pixels[:n], contract))
    result = {"images": len(expected), **against_integer(expected, got)}
    differ = round((1 - result["identical_outputs"]) * len(expected))
    if not differ:
        log(f"convert: TFLM's int8 outputs equal the Keras model's integer arithmetic on {len(expected)} images, "
            "bit for bit")
    else:
        log(f"warning: TFLM's int8 outputs differ from the Keras model's integer arithmetic on {differ} of "
            f"{len(expected)} images (up to {result['max_abs_diff']} steps): the file does not compute exactly "
            "what was trained; please report it with the run folder")
    return result
