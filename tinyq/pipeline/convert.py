"""``tinyq convert RUN``: the run's QAT model to its file, compacted, checked against the integer model."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tinyq.contract import InputContract
from tinyq.convert.compact import compact_verified, tensor_names
from tinyq.convert.converter import convert
from tinyq.errors import TinyqError
from tinyq.logs import Log, quiet
from tinyq.qat import load_model
from tinyq.runfolder import Run, atomic_path, json_bytes, require_writable, write_files
from tinyq.tflite import flatbuffer
from tinyq.verify import against_integer_model


def save_representative(run: Run, pixels: np.ndarray, n: int = 200, seed: int = 0) -> None:
    """Keep a seeded sample of training pixels in the run, so ``tinyq convert RUN`` can calibrate."""
    rng = np.random.default_rng(seed)
    sample = pixels[np.sort(rng.choice(len(pixels), size=min(n, len(pixels)), replace=False))]
    with atomic_path(run / "representative.npy") as tmp:
        np.save(tmp, sample)


def convert_run(run: Run | str | Path, storage_bits: int | None = None, out: str | Path | None = None,
                representative: np.ndarray | None = None, log: Log = quiet,
                compact: bool = True, keep_uncompacted: bool = False) -> Path:
    """Convert the run's QAT model to ``out`` (default ``RUN/model.tflite``), compacted unless ``compact=False``."""
    run = (run if isinstance(run, Run) else Run(run)).require()
    target = Path(out) if out is not None else run.tflite
    for path in (target, *sidecars(target, keep_uncompacted)):  # before any work: nothing to undo
        require_writable(path)
        if path.is_dir():
            raise TinyqError(f"--out {str(path)!r} is a folder; give a file name such as {str(path / 'model.tflite')!r}")
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
        try:
            representative = np.load(rep_path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise TinyqError(f"{str(rep_path)!r} is damaged ({str(e).splitlines()[0][:80]}); train again, or "
                             "convert with the run's images") from None
        if representative.ndim != 4 or representative.shape[0] == 0:
            raise TinyqError(f"{str(rep_path)!r} does not hold calibration images (shape "
                             f"{representative.shape}); train again")
    else:
        save_representative(run, representative)
    # converter PTQ: the float model goes to the converter, which picks every scale itself
    model = load_model(source)
    log("convert: the TFLite converter, then the check of every weight tensor (under a minute) ...")
    data = convert(model, representative, contract, storage_bits, log,
                   allow_float=bool(config["train"].get("allow_float")))
    files = {}
    if compact:
        log("compact: dropping what TFLM does not read, each step checked in TFLM ...")
        data, files = compact_file(data, representative, contract, target, keep_uncompacted, log)
    if not converter_ptq:
        outputs = against_integer_model(model, data, representative, contract, storage_bits, log)
        if target == run.tflite:
            run.update_metrics(integer_check=outputs)
    write_files({target: data, **files})  # the file and its sidecars, all or none
    log(f"wrote {target} ({len(data):,} bytes)")
    return target


def sidecars(target: Path, keep_uncompacted: bool = False) -> list[Path]:
    """The files written beside ``target``: its tensor-name map, the compaction record, and with
    ``keep_uncompacted`` the converter's file."""
    paths = [flatbuffer.names_path(target), target.with_name(target.stem + ".compaction.json")]
    return paths + ([target.with_name(target.stem + ".uncompacted.tflite")] if keep_uncompacted else [])


def compact_file(data: bytes, representative: np.ndarray, contract: InputContract, target: Path,
                 keep_uncompacted: bool = False, log: Log = quiet) -> tuple[bytes, dict[Path, bytes]]:
    """:func:`tinyq.convert.compact.compact` verified on up to 32 representative images, and the files to write
    beside ``target`` (:func:`sidecars`): the tensor-name map (``inspect`` and ``report`` read it), the
    compaction record and, with ``keep_uncompacted``, the file before compaction."""
    compacted, record = compact_verified(data, representative, contract, log=log)
    names, record_path, *rest = sidecars(target, keep_uncompacted)
    files = {names: json_bytes({"tensor_names": tensor_names(data)}), record_path: json_bytes(record)}
    if rest:
        files[rest[0]] = data
    return compacted, files

