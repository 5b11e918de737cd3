"""``tinyq export RUN --target c``: model_data.{cc,c,h} and model_settings.h."""
from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Callable

import numpy as np

from tinyq import __version__
from tinyq.check import arena_bytes, contract_for, run_of
from tinyq.convert import flatbuffer
from tinyq.errors import TinyqError, expected_one_of
from tinyq.runfolder import Run, write_text

TARGETS = ("c",)
ARENA_MARGIN_PERCENT = 10


def templates_dir() -> Path:
    """``tinyq/firmware_export`` when installed, the checkout's top-level folder otherwise."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "firmware_export", here.parent / "firmware_export"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("tinyq's firmware_export/ folder is missing from the installation")


def c_identifier(text: str) -> str:
    """A valid C identifier from any name: ``"pd-w4 (v2)"`` -> ``"pd_w4_v2"``."""
    ident = re.sub(r"[^0-9A-Za-z_]+", "_", text).strip("_").lower() or "model"
    return f"m_{ident}" if ident[0].isdigit() else ident


def resolver_name(op: str) -> str:
    """TFLite op name -> MicroMutableOpResolver method suffix: DEPTHWISE_CONV_2D -> DepthwiseConv2D."""
    if op in flatbuffer.DECODE_OPS:
        return "Decode"
    return "".join(part.capitalize() if not part[0].isdigit() else part.upper() for part in op.split("_"))


def c_bytes(data: bytes, per_line: int = 12) -> str:
    hexes = [f"0x{b:02x}" for b in data]
    return "\n".join("  " + ", ".join(hexes[i:i + per_line]) + "," for i in range(0, len(hexes), per_line))


def _fill(template: str, **values) -> str:
    return string.Template((templates_dir() / "c" / template).read_text()).substitute(values)


def _float(v: float) -> str:
    return repr(float(np.float32(v)))


def export(source: str | Path, out: str | Path, target: str = "c", lang: str = "cc", name: str | None = None,
           log: Callable[[str], None] = lambda m: None) -> list[Path]:
    """Write C sources for ``source`` (a run folder or a .tflite file) into ``out``."""
    if target not in TARGETS:
        raise expected_one_of("target", TARGETS, target)
    if lang not in ("cc", "c"):
        raise expected_one_of("language", ("cc", "c"), lang)
    source = Path(source)
    tflite = Run(source).require().tflite if source.is_dir() else source
    data, fb = flatbuffer.read(tflite)
    run = run_of(tflite)
    contract = contract_for(fb, run)
    name = c_identifier(name or (run.config()["train"]["recipe"] if run else tflite.stem))
    guard = name.upper()
    tin, tout = fb.tensors[fb.inputs[0]], fb.tensors[fb.outputs[0]]
    if tin.type != "INT8" or tout.type != "INT8":
        raise TinyqError(f"{str(tflite)!r} has {tin.type} input / {tout.type} output; export needs a full-integer "
                         "model (tinyq convert makes one)")
    log("export: measuring the TFLM arena ...")
    measured = arena_bytes(data)
    arena = -(-measured * (100 + ARENA_MARGIN_PERCENT) // 100 // 16) * 16
    ops = [resolver_name(op) for op in fb.op_names]
    labels = list(contract.labels)
    summary = f"{len(fb.ops)} ops, {', '.join(fb.op_names)}"
    common = dict(name=name, guard=guard, version=__version__, file_bytes=len(data))
    files = {
        "model_data.h": _fill("model_data.h.tmpl", **common),
        f"model_data.{lang}": _fill(
            "model_data.c.tmpl", **common, source=tflite.name, summary=summary, bytes=c_bytes(data),
            align_include="#include <stdalign.h>" if lang == "c" else "",
            align="alignas(16)"),
        "model_settings.h": _fill(
            "model_settings.h.tmpl", **common, rows=contract.resolution, cols=contract.resolution,
            channels=contract.channels, colour="RGB" if contract.channels == 3 else "grayscale",
            lo=_float(contract.value_range[0]), hi=_float(contract.value_range[1]),
            input_scale=_float(tin.scales[0]), input_zero_point=int(tin.zero_points[0]),
            output_scale=_float(tout.scales[0]), output_zero_point=int(tout.zero_points[0]),
            num_classes=len(labels),
            label_defines="".join(f"#define {guard}_LABEL_{c_identifier(l).upper()} {i}\n" for i, l in enumerate(labels)),
            labels=", ".join(f'"{l}"' for l in labels),
            arena_measured=measured, arena=arena, margin_percent=ARENA_MARGIN_PERCENT,
            num_ops=len(ops), ops_x=" ".join(f"X({op})" for op in ops)),
    }
    out = Path(out)
    written = []
    for fname, text in files.items():
        write_text(out / fname, text)
        written.append(out / fname)
    log(f"export: {', '.join(str(p) for p in written)}; arena {arena:,} bytes (measured {measured:,})")
    return written
