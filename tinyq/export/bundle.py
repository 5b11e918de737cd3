"""What every export target is made of: the model, its contract, its ops, arena and a sample.

Everything is computed (and every check that can fail has failed) before any file is written,
so a bad input never leaves half an export behind.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tinyq.contract import InputContract
from tinyq.errors import TinyqError
from tinyq.runfolder import Run
from tinyq.runtimes import arena_bytes, model_input, require_int8_io, tflm_outputs
from tinyq.runtimes.guard import require_runnable
from tinyq.tflite import flatbuffer
from tinyq.verify import contract_for, run_of

ARENA_MARGIN_PERCENT = 10
SAMPLE_SEED = 0


def c_identifier(text: str) -> str:
    """A valid C identifier from any name: ``"pd-w4 (v2)"`` -> ``"pd_w4_v2"``."""
    ident = re.sub(r"[^0-9A-Za-z_]+", "_", text).strip("_").lower() or "model"
    return f"m_{ident}" if ident[0].isdigit() else ident


def resolver_name(op: str) -> str:
    """TFLite op name -> MicroMutableOpResolver method suffix: DEPTHWISE_CONV_2D -> DepthwiseConv2D."""
    if op in flatbuffer.DECODE_OPS:
        return "Decode"
    return "".join(part.capitalize() if not part[0].isdigit() else part.upper() for part in op.split("_"))


@dataclass(frozen=True)
class Bundle:
    """One model ready to export: bytes, contract, ops, arena and a sample with TFLM's answer."""

    name: str
    source: Path
    data: bytes
    fb: flatbuffer.Flatbuffer
    contract: InputContract
    arena_measured: int
    ops: tuple[str, ...]
    sample_source: str
    sample_pixels: np.ndarray  # (H, W, C) uint8
    sample_input: np.ndarray  # (H, W, C) int8, the model's input tensor
    sample_expected: np.ndarray  # (classes,) int8, TFLM's output on the host

    @property
    def guard(self) -> str:
        return self.name.upper()

    @property
    def arena(self) -> int:
        """The measured arena plus ARENA_MARGIN_PERCENT, rounded up to 16 bytes."""
        return -(-self.arena_measured * (100 + ARENA_MARGIN_PERCENT) // 100 // 16) * 16

    @property
    def input_quant(self) -> tuple[float, int]:
        return self.fb.tensors[self.fb.inputs[0]].affine

    @property
    def output_quant(self) -> tuple[float, int]:
        return self.fb.tensors[self.fb.outputs[0]].affine

    def pixel_table(self) -> np.ndarray:
        """int8 model input for each camera pixel value 0..255, per the contract."""
        return model_input(self.fb, np.arange(256, dtype=np.uint8), self.contract)


def _sample_pixels(contract: InputContract, image: str | Path | None) -> tuple[str, np.ndarray]:
    if image is None:
        from tinyq.data.synthetic import make_image

        img = make_image(np.random.default_rng(SAMPLE_SEED), person=True, size=contract.resolution)
        arr = np.asarray(img.convert("RGB" if contract.channels == 3 else "L"), np.uint8)
        return "a drawn person figure (synthetic; a model trained on photos may not call it a person)", arr.reshape(contract.shape)
    from tinyq.data.folder import load_image

    path = Path(image)
    if not path.is_file():
        raise TinyqError(f"sample image {str(path)!r} does not exist; give an image file to --sample")
    arr = load_image(path, contract.resolution, contract.channels)
    if arr is None:
        raise TinyqError(f"sample image {str(path)!r} cannot be read as an image; give a JPEG, PNG or BMP")
    return path.name, arr


def _default_name(run: Run | None, tflite: Path) -> str:
    """The recipe of a trained run, the model file's stem of a quantized one, else the .tflite's stem."""
    job = run.config().get("train", {}) if run else {}
    if job.get("recipe"):
        return job["recipe"]
    return Path(job["model"]).stem if job.get("model") else tflite.stem


def prepare(source: str | Path, name: str | None = None, sample: str | Path | None = None,
            log: Callable[[str], None] = lambda m: None) -> Bundle:
    """Read ``source`` (a run folder or a .tflite), measure its arena and run the sample in TFLM."""
    source = Path(source)
    tflite = Run(source).require().tflite if source.is_dir() else source
    data, fb = flatbuffer.read(tflite)
    run = run_of(tflite)
    contract = contract_for(fb, run)
    require_int8_io(fb, tflite, "export needs a full-integer model (tinyq convert makes one)")
    require_runnable(data, repr(str(tflite)))
    sample_source, pixels = _sample_pixels(contract, sample)
    log("export: measuring the TFLM arena and running the sample ...")
    measured = arena_bytes(data)
    x = model_input(fb, pixels, contract)
    expected = tflm_outputs(data, x[None])[0].astype(np.int8)
    return Bundle(
        name=c_identifier(name or _default_name(run, tflite)),
        source=tflite, data=data, fb=fb, contract=contract, arena_measured=measured,
        ops=tuple(resolver_name(op) for op in fb.op_names), sample_source=sample_source,
        sample_pixels=pixels, sample_input=x, sample_expected=expected.reshape(-1))
