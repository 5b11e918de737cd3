"""Export targets: each lays the model's sources out as one kind of firmware project.

``TARGETS`` maps a target name to a function ``(values, options) -> {relative path: text}``;
the CLI's ``--target`` choices come from it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tinyq.errors import TinyqError, expected_one_of
from tinyq.runfolder import require_folder_out
from tinyq.export.sources import MODEL_HEADERS, fill, model_sources, run_sample_sources, templates_dir

EXAMPLE = "person_detect"


@dataclass(frozen=True)
class Options:
    """What the user chose beyond the model: the output folder and, for ``c``, the language."""

    out: Path
    lang: str = "cc"

    def __post_init__(self) -> None:
        if self.lang not in ("cc", "c"):
            raise expected_one_of("language", ("cc", "c"), self.lang)
        require_folder_out(self.out)


def c_target(v: dict, opts: Options) -> dict[str, str]:
    """Plain sources: model_data, model_settings.h, model_io, sample_input (C11 or C++17)."""
    return model_sources(v, opts.lang)


def _prefixed(files: dict[str, str], prefix: str) -> dict[str, str]:
    return {f"{prefix}/{k}": t for k, t in files.items()}


def arduino_library_name(folder: Path, name: str) -> str:
    """The library's name: the output folder's, as Arduino expects, in the characters it allows."""
    lib = re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.resolve().name).strip("_.-")
    return lib if lib and lib[0].isalnum() else name


def arduino_target(v: dict, opts: Options) -> dict[str, str]:
    """An Arduino library: library.properties, src/<Library>.h, src/<name>/*, examples/person_detect/."""
    library = arduino_library_name(opts.out, v["name"])
    w = dict(v, library=library, library_version="1.0.0", example=EXAMPLE)
    files = {"library.properties": fill("arduino/library.properties.tmpl", **w),
             "README.md": fill("arduino/README.md.tmpl", **w),
             f"src/{library}.h": fill("arduino/library.h.tmpl", **w)}
    files |= _prefixed(model_sources(v, "cpp"), f"src/{v['name']}")
    sketch = f"examples/{EXAMPLE}"
    files[f"{sketch}/{EXAMPLE}.ino"] = fill("arduino/sketch.ino.tmpl", **w)
    files |= _prefixed(run_sample_sources(v, "cpp", model_includes=f"#include <{library}.h>\n"), sketch)
    return files


BOARD_FILES = ("tinyq_board.h", "semihost.c", "startup.c", "debug_log.cc", "sections.ld", "mps2/board.c",
               "mps2/mps2.ld", "mps3_an547/board.c", "mps3_an547/an547.ld")


def cmake_target(v: dict, opts: Options) -> dict[str, str]:
    """A CMake project: model/ (a library), src/ (a TFLM example), cmake/arm-none-eabi.cmake, and board/
    (start-up, linker scripts and semihosting for QEMU's Cortex-M boards)."""
    files = {"CMakeLists.txt": fill("cmake/CMakeLists.txt.tmpl", **v),
             "README.md": fill("cmake/README.md.tmpl", **v),
             "cmake/arm-none-eabi.cmake": fill("cmake/arm-none-eabi.cmake.tmpl", **v),
             "src/main.cc": fill("cmake/main.cc.tmpl", **v)}
    files |= _prefixed(model_sources(v, "cc"), "model")
    files |= _prefixed(run_sample_sources(v, "cc"), "src")
    files |= {f"board/{name}": (templates_dir() / "device" / name).read_text() for name in BOARD_FILES}
    return files


def zephyr_target(v: dict, opts: Options) -> dict[str, str]:
    """A Zephyr module: zephyr/{module.yml,CMakeLists.txt,Kconfig}, src/, include/, samples/."""
    w = dict(v, module=f"tinyq_{v['name']}", kconfig=f"TINYQ_{v['guard']}", example=EXAMPLE)
    files = {"zephyr/module.yml": fill("zephyr/module.yml.tmpl", **w),
             "zephyr/CMakeLists.txt": fill("zephyr/CMakeLists.txt.tmpl", **w),
             "zephyr/Kconfig": fill("zephyr/Kconfig.tmpl", **w),
             "README.md": fill("zephyr/README.md.tmpl", **w)}
    for fname, text in model_sources(v, "cc").items():
        files[f"{'include' if fname in MODEL_HEADERS else 'src'}/{fname}"] = text
    sample = f"samples/{EXAMPLE}"
    files |= {f"{sample}/CMakeLists.txt": fill("zephyr/sample_CMakeLists.txt.tmpl", **w),
              f"{sample}/prj.conf": fill("zephyr/prj.conf.tmpl", **w),
              f"{sample}/sample.yaml": fill("zephyr/sample.yaml.tmpl", **w),
              f"{sample}/src/main.cpp": fill("zephyr/main.cpp.tmpl", **w)}
    files |= _prefixed(run_sample_sources(v, "cpp"), f"{sample}/src")
    return files


def aot_engine(v: dict):
    """The AOT engine's sources and sizes for the exported model (:class:`tinyq.aot.codegen.Generated`)."""
    from tinyq.aot.codegen import generate
    from tinyq.aot.lower import lower

    return generate(lower(v["tflite"]), v["name"], v["guard"], settings="model_settings.h")


def aot_files(v: dict, generated) -> dict[str, str]:
    """Plain C99 with no TFLM (tinyq.aot): the engine (NAME.h, NAME.c), model_settings.h (the input
    contract), model_io and sample_input, example/main.c (the sample against the host's scores), README.md."""
    w = dict(v, buffer_bytes=generated.buffer_bytes, scratch_bytes=generated.scratch_bytes,
             helium_scratch_bytes=generated.helium_scratch_bytes,
             constant_bytes=generated.constant_bytes,
             packed_weight_bytes=generated.packed_weight_bytes)
    files = {f"{v['name']}.h": generated.header, f"{v['name']}.c": generated.source,
             "model_settings.h": fill("aot/model_settings.h.tmpl", **w),
             "example/main.c": fill("aot/main.c.tmpl", **w), "README.md": fill("aot/README.md.tmpl", **w)}
    common = model_sources(v, "c")
    files |= {k: common[k] for k in ("model_io.h", "model_io.c", "sample_input.h", "sample_input.c")}
    return files


def aot_target(v: dict, opts: Options) -> dict[str, str]:
    return aot_files(v, aot_engine(v))


TARGETS: dict[str, Callable[[dict, Options], dict[str, str]]] = {
    "c": c_target, "arduino": arduino_target, "cmake": cmake_target, "zephyr": zephyr_target, "aot": aot_target}


def validate(target: str, opts: Options) -> None:
    """Fail on an unknown target or a language it does not take, before any work is done."""
    if target not in TARGETS:
        raise expected_one_of("target", tuple(TARGETS), target)
    if target != "c" and opts.lang != "cc":
        raise TinyqError(f"--lang {opts.lang} applies to --target c only; {target} projects are C++")


def files_for(target: str, v: dict, opts: Options) -> dict[str, str]:
    validate(target, opts)
    return TARGETS[target](v, opts)
