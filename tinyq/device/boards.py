"""The emulated boards: QEMU's Arm MPS2 / MPS3 FPGA images, each a Cortex-M core with memory to spare."""
from __future__ import annotations

from dataclasses import dataclass

from tinyq.errors import TinyqError, expected_one_of


@dataclass(frozen=True)
class Board:
    name: str  # --board
    core: str
    machine: str  # qemu-system-arm -M
    cpu_flags: tuple[str, ...]
    support: str  # folder of firmware_export/device holding board.c and the linker script
    linker_script: str
    tick_instructions: float  # instructions per timer tick under -icount shift=0: the count's resolution
    compile_flags: tuple[str, ...] = ()
    helium: bool = False  # the M-profile vector extension (MVE), which tinyq's AOT kernels use where present


BOARDS: dict[str, Board] = {b.name: b for b in [
    Board("m4", "Cortex-M4F", "mps2-an386", ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
          "mps2", "mps2.ld", 40),
    Board("m7", "Cortex-M7", "mps2-an500", ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16"),
          "mps2", "mps2.ld", 40),
    # no if-conversion: GCC 12 otherwise puts a VCVT in an IT block for the M55 (TFLM's resize_nearest_neighbor
    # at -O2 with NDEBUG), which its own assembler rejects
    Board("m55", "Cortex-M55 (Helium)", "mps3-an547", ("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard"),
          "mps3_an547", "an547.ld", 31.25, ("-fno-if-conversion", "-fno-if-conversion2"), helium=True),
]}

KERNELS = ("reference", "cmsis-nn")


def board(name: str) -> Board:
    if name not in BOARDS:
        raise expected_one_of("--board", BOARDS, name)
    return BOARDS[name]


def kernels(name: str) -> str:
    if name not in KERNELS:
        raise expected_one_of("--kernels", KERNELS, name)
    return name


ENGINES = ("tflm", "aot")


def require_engine(engine: str, kernels: str, logs: bool) -> None:
    """``--engine``: TFLM (with its kernels) or tinyq's AOT engine (which takes neither --kernels nor --logs)."""
    if engine not in ENGINES:
        raise expected_one_of("engine", ENGINES, engine)
    if engine == "aot" and (kernels != "reference" or logs):
        raise TinyqError("--engine aot runs tinyq's own kernels and has no TFLM messages: drop --kernels and --logs")
