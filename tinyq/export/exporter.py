"""``tinyq export SOURCE --target T --out DIR``: prepare once, lay out per target, write atomically."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tinyq.export.bundle import prepare
from tinyq.export.flash import flash_bytes
from tinyq.export.sources import model_sources, values
from tinyq.export.targets import Options, aot_engine, aot_files, files_for, validate
from tinyq.runfolder import write_files


@dataclass
class ExportResult:
    """What was written, and what the firmware will need: arena and flash bytes."""

    files: list[Path]
    arena: int
    arena_measured: int
    flash: dict[str, int] = field(default_factory=dict)  # source file -> bytes on a Cortex-M4
    flash_unmeasured: str = ""  # why flash is not measured, when it is not

    def summary(self) -> str:
        arena = f"arena {self.arena:,} bytes (measured {self.arena_measured:,})"
        if not self.flash:
            return f"{arena}; flash not measured: {self.flash_unmeasured}"
        f = self.flash
        if "engine" in f:  # --target aot: no TFLM, no arena
            return (f"AOT engine: {f['engine']:,} bytes of flash on cortex-m4 -Os (code and constants), "
                    f"{f['buffer']:,} bytes of static buffer; preprocessing {f['model_io.c']:,}")
        return (f"{arena}; flash on cortex-m4 -Os (arm-none-eabi-size): model {f['model_data.c']:,} bytes, "
                f"preprocessing {f['model_io.c']:,}, sample {f['sample_input.c']:,} (drop sample_input.* "
                "once the board matches the host)")


def export(source: str | Path, out: str | Path, target: str = "c", lang: str = "cc", name: str | None = None,
           sample: str | Path | None = None, log: Callable[[str], None] = lambda m: None) -> ExportResult:
    """Write ``target``'s files for ``source`` (a run folder or a .tflite file) into ``out``."""
    opts = Options(Path(out), lang)
    validate(target, opts)
    bundle = prepare(source, name=name, sample=sample, log=log)
    v = values(bundle)
    if target == "aot":  # its flash is the engine's, and its RAM the engine's buffer
        generated = aot_engine(v)
        files = aot_files(v, generated)
        measured = flash_bytes({k: t for k, t in files.items() if "/" not in k and k.endswith((".c", ".h"))})
        if isinstance(measured, dict):
            measured = {"engine": measured[f"{v['name']}.c"], "buffer": generated.buffer_bytes,
                        "model_io.c": measured["model_io.c"]}
    else:
        files = files_for(target, v, opts)
        measured = flash_bytes(model_sources(v, "c"))
    result = ExportResult([], bundle.arena, bundle.arena_measured,
                          **({"flash": measured} if isinstance(measured, dict) else {"flash_unmeasured": measured}))
    write_files({opts.out / rel: text.encode() for rel, text in files.items()})
    result.files = [opts.out / rel for rel in files]
    log(f"export: {len(files)} files in {opts.out}; {result.summary()}")
    return result
