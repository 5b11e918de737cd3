"""The model's C sources, shared by every target, filled in from ``firmware_export/common``."""
from __future__ import annotations

import string
from pathlib import Path

import numpy as np

from tinyq.version import __version__
from tinyq.export.bundle import ARENA_MARGIN_PERCENT, Bundle, c_identifier


def templates_dir() -> Path:
    """``tinyq/firmware_export`` when installed, the checkout's top-level folder otherwise."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "firmware_export", here.parent / "firmware_export"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("tinyq's firmware_export/ folder is missing from the installation")


def fill(template: str, **values) -> str:
    """``firmware_export/<template>`` with ``${key}`` replaced; ``$$`` stays a literal ``$``."""
    return string.Template((templates_dir() / template).read_text()).substitute(values)


def c_array(values, per_line: int = 12, fmt=lambda v: f"0x{v:02x}") -> str:
    items = [fmt(int(v)) for v in np.asarray(values).reshape(-1)]
    return "\n".join("  " + ", ".join(items[i:i + per_line]) + "," for i in range(0, len(items), per_line))


def _float(v: float) -> str:
    return repr(float(np.float32(v)))


def _bits_summary(bundle: Bundle) -> str:
    from tinyq.tflite.breakdown import stored_weights

    widths = {w["bits"] for w in stored_weights(bundle.fb).values()}
    return "/".join(str(b) for b in sorted(widths)) + "-bit"


def values(bundle: Bundle) -> dict[str, object]:
    """Every template variable, computed once per export."""
    c = bundle.contract
    in_scale, in_zp = bundle.input_quant
    out_scale, out_zp = bundle.output_quant
    probs = (bundle.sample_expected.astype(np.float64) - out_zp) * out_scale
    top = int(np.argmax(bundle.sample_expected))
    decode = "Decode" in bundle.ops
    return dict(
        name=bundle.name, guard=bundle.guard, version=__version__, file_bytes=len(bundle.data),
        source=bundle.source.name, summary=f"{len(bundle.fb.ops)} ops, {', '.join(bundle.fb.op_names)}",
        bits_summary=_bits_summary(bundle), bytes=c_array(np.frombuffer(bundle.data, np.uint8)),
        rows=c.resolution, cols=c.resolution, channels=c.channels, colour="RGB" if c.channels == 3 else "grayscale",
        lo=_float(c.value_range[0]), hi=_float(c.value_range[1]),
        input_scale=_float(in_scale), input_zero_point=in_zp, output_scale=_float(out_scale),
        output_zero_point=out_zp, num_classes=len(c.labels),
        label_defines="".join(f"#define {bundle.guard}_LABEL_{l.upper()} {i}\n"
                              for i, l in enumerate(c_identifier(x) for x in c.labels)),
        labels=", ".join(f'"{l}"' for l in c.labels),
        arena_measured=bundle.arena_measured, arena=bundle.arena, margin_percent=ARENA_MARGIN_PERCENT,
        num_ops=len(bundle.ops), ops=", ".join(bundle.ops), ops_x=" ".join(f"X({op})" for op in bundle.ops),
        decode_note=", DECODE included: it expands the 2-bit LUT weights" if decode else "",
        pixel_table=c_array(bundle.pixel_table(), 16, str),
        sample_source=bundle.sample_source, sample_pixels=c_array(bundle.sample_pixels),
        sample_expected=", ".join(str(int(v)) for v in bundle.sample_expected),
        expected_summary=", ".join(f"{l} {p:.3f}" for l, p in zip(c.labels, probs)) + f" (top: {c.labels[top]})",
        tflite=bundle.data,  # not a template variable: the AOT target reads the file itself
    )


def model_sources(v: dict, ext: str, align: str = "alignas(16)") -> dict[str, str]:
    """model_data, model_settings, model_io and sample_input: C11 and C++17 alike."""
    return {
        "model_data.h": fill("common/model_data.h.tmpl", **v),
        f"model_data.{ext}": fill("common/model_data.c.tmpl", **v, align=align,
                                  align_include="#include <stdalign.h>" if ext == "c" else ""),
        "model_settings.h": fill("common/model_settings.h.tmpl", **v),
        "model_io.h": fill("common/model_io.h.tmpl", **v),
        f"model_io.{ext}": fill("common/model_io.c.tmpl", **v),
        "sample_input.h": fill("common/sample_input.h.tmpl", **v),
        f"sample_input.{ext}": fill("common/sample_input.c.tmpl", **v),
    }


MODEL_HEADERS = ("model_data.h", "model_io.h", "model_settings.h", "sample_input.h")


def run_sample_sources(v: dict, ext: str, model_includes: str | None = None) -> dict[str, str]:
    """The TFLM example body (C++): run_sample.h and run_sample.<ext>."""
    includes = model_includes or "".join(f'#include "{h}"\n' for h in MODEL_HEADERS)
    return {"run_sample.h": fill("common/run_sample.h.tmpl", **v),
            f"run_sample.{ext}": fill("common/run_sample.cc.tmpl", **v, model_includes=includes)}
