"""A model's firmware: the exported model sources, tinyq's runner and board support, linked with a
TFLM library; where its flash goes, read from the link map."""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tinyq.device.boards import Board
from tinyq.device.tflm import Tree, flags
from tinyq.errors import TinyqError
from tinyq.export.bundle import Bundle
from tinyq.export.sources import model_sources, templates_dir, values

SUPPORT = ("tinyq_board.h", "semihost.c", "startup.c", "debug_log.cc", "runner.cc", "sections.ld")
FLASH_SECTIONS = (".text", ".ARM.exidx", ".init_array", ".data")
LIBC = ("libc.a", "libc_nano.a", "libm.a", "libg.a", "libg_nano.a", "libgcc.a", "libstdc++", "libsupc++",
        "libnosys.a", "libc_s.a")


@dataclass(frozen=True)
class Firmware:
    elf: Path
    flash: dict[str, int]  # model, tflm, libc, application, padding (bytes of code and constants)
    ram: dict[str, int]  # static (.data + .bss), arena_buffer, stack_reserved
    stdio: bool  # whether the C library's formatted output is linked in
    extra: dict = field(default_factory=dict)

    @property
    def flash_total(self) -> int:
        return sum(self.flash.values())


def support_dir() -> Path:
    return templates_dir() / "device"


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        first = next((line for line in done.stderr.splitlines() if "error" in line.lower()),
                     (done.stderr.strip().splitlines() or ["no message"])[-1])
        raise TinyqError(f"{what} failed: {first[:300]}")


def _build(folder: Path, board: Board, sources: dict[str, str], support: tuple[str, ...], compile_flags: dict,
           extra: list[str], libraries: list[str], linker: str, model: str, arena: int,
           optimize: str = "-Os") -> Firmware:
    """Write ``sources`` and the board support into ``folder``/src, compile the C and C++ there (the
    sample's scores are for the host, not linked) at ``optimize``, link with ``libraries``; flash from
    the link map."""
    if folder.exists():
        shutil.rmtree(folder)
    src = folder / "src"
    src.mkdir(parents=True)
    for name, text in sources.items():
        (src / name).write_text(text)
    for name in support:
        shutil.copy(support_dir() / name, src / name)
    shutil.copy(support_dir() / board.support / "board.c", src / "board.c")
    shutil.copy(support_dir() / board.support / board.linker_script, src / board.linker_script)
    objects = []
    for path in sorted(src.iterdir()):
        if path.suffix not in (".c", ".cc") or path.name == "sample_input.cc":
            continue
        obj = folder / (path.stem + ".o")
        tool, kind = ("arm-none-eabi-g++", "cc") if path.suffix == ".cc" else ("arm-none-eabi-gcc", "c")
        _run([tool, *compile_flags[kind], optimize, f"-I{src}", *extra, "-c", str(path), "-o", str(obj)],
             f"compiling {path.name}")
        objects.append(str(obj))
    elf, map_file = folder / "firmware.elf", folder / "firmware.map"
    _run([linker, *board.cpu_flags, "-nostartfiles", f"-T{src / board.linker_script}", f"-L{src}",
          "-Wl,--gc-sections", f"-Wl,-Map={map_file}", "--specs=nano.specs", "--specs=nosys.specs",
          *objects, *libraries, "-lm", "-o", str(elf)], "linking the firmware")
    link_map = map_file.read_text()
    split, sections = flash_split(link_map, model)
    stdio = bool(re.search(r"\b_?v?s?n?printf|_svfprintf_r|_vfprintf_r", link_map))
    return Firmware(elf, split, {"static": sections.get(".data", 0) + sections.get(".bss", 0),
                                 "arena_buffer": arena}, stdio)


def build(bundle: Bundle, board: Board, kernels: str, tree: Tree, library: Path, folder: Path,
          logs: bool = False) -> Firmware:
    """Compile and link ``bundle`` for ``board`` in ``folder`` against ``library`` (:func:`tinyq.device.tflm.build_library`)."""
    cmsis_nn = kernels == "cmsis-nn"
    return _build(folder, board, model_sources(values(bundle), "cc"), SUPPORT, flags(board, cmsis_nn, logs),
                  [f"-DTQ_MODEL_NAME={bundle.name}", f"-DTQ_MODEL_GUARD={bundle.guard}", *tree.includes(cmsis_nn)],
                  [str(library)], "arm-none-eabi-g++", bundle.name, bundle.arena)


AOT_SUPPORT = ("tinyq_board.h", "semihost.c", "startup.c", "runner_aot.c", "sections.ld")


def build_aot(bundle: Bundle, board: Board, folder: Path) -> Firmware:
    """``bundle`` as tinyq's AOT engine (:mod:`tinyq.aot`) with the AOT runner and board support, no TFLM,
    at -O2 (as TFLM's builds compile their kernels; the engine is kernels)."""
    from tinyq.aot.lower import lower

    return build_program(lower(bundle.data), board, folder)


def build_program(program, board: Board, folder: Path) -> Firmware:
    """An AOT ``program`` (:class:`tinyq.aot.lower.Program`) as firmware for ``board`` (:func:`build_aot`)."""
    from tinyq.aot.codegen import generate

    generated = generate(program, "tq_model", "TQ_MODEL")
    return _build(folder, board, {"tq_model.h": generated.header, "tq_model.c": generated.source}, AOT_SUPPORT,
                  flags(board, False, False), [], [], "arm-none-eabi-gcc", "tq_model",
                  generated.buffer_bytes + (generated.helium_scratch_bytes if board.helium else generated.scratch_bytes),
                  optimize="-O2")


_OUTPUT = re.compile(r"^(\.[\w.]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)")
_INPUT = re.compile(r"^\s+(?:(\S+)\s+)?0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S.*)$")
_INPUT_NAME = re.compile(r"^ (\.\S+|COMMON)\s*$")


def owner(path: str, model: str) -> str:
    """Which part of the firmware an input file of the link belongs to."""
    name = path.rsplit("/", 1)[-1]
    if "libtflm.a" in path:
        return "tflm"
    if any(lib in path for lib in LIBC) or "/arm-none-eabi/lib" in path:
        return "libc"
    if name in ("model_data.o", "tq_model.o"):  # TFLM's flatbuffer; the AOT engine (kernels and constants)
        return "model"
    return "application"


def flash_split(map_text: str, model: str) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes in flash by part (model, tflm, libc, application) and output section sizes, from a GNU ld map."""
    text = map_text.split("Linker script and memory map", 1)[-1]
    split = {"model": 0, "tflm": 0, "libc": 0, "application": 0}
    sections: dict[str, int] = {}
    current, pending = None, None
    for line in text.splitlines():
        m = _OUTPUT.match(line)
        if m:
            current = m.group(1)
            sections[current] = int(m.group(3), 16)
            continue
        if _INPUT_NAME.match(line):
            pending = line.strip()
            continue
        m = _INPUT.match(line)
        if m and current in FLASH_SECTIONS:
            size, path = int(m.group(3), 16), m.group(4).strip()
            if (m.group(1) or pending) and size and not path.startswith("*fill*"):
                split[owner(path, model)] += size
        pending = None
    split["padding"] = sum(sections.get(s, 0) for s in FLASH_SECTIONS) - sum(split.values())
    return split, sections
