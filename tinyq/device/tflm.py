"""A user's TensorFlow Lite Micro tree, compiled once per (board, kernel set, logging) into a library.

A tree is what tflite-micro's ``create_tflm_tree.py`` writes (``tensorflow/``, ``third_party/``),
the Arduino library (the same under ``src/``) or a tflite-micro checkout whose third-party code
was downloaded (``tensorflow/lite/micro/tools/make/downloads/``). tinyq compiles every
``tensorflow/**/*.cc`` of it but tests and platform files (tinyq brings its own log sink), with
CMSIS-NN's kernels in place of the reference ones where asked, the way TFLM's own makefiles
do: ``-Os`` for the core, ``-O2`` for kernels. The build lives in a cache folder keyed by the
tree's path and the flags; ``make`` rebuilds only what changed.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tinyq.device.boards import Board
from tinyq.errors import TinyqError
from tinyq.logs import Log
from tinyq.runfolder import cache_root

INTERPRETER_H = "tensorflow/lite/micro/micro_interpreter.h"
# third-party folders: (what must be there, include folders relative to it)
THIRD_PARTY = {
    "flatbuffers": ("flatbuffers/include/flatbuffers/flatbuffers.h", ("flatbuffers/include",)),
    "gemmlowp": ("gemmlowp/fixedpoint/fixedpoint.h", ("gemmlowp",)),
    "ruy": ("ruy/ruy/profiler/instrumentation.h", ("ruy",)),
    "kissfft": ("kissfft/kiss_fft.h", ("kissfft",)),
    "cmsis": ("cmsis/CMSIS/Core/Include/cmsis_compiler.h", ("cmsis", "cmsis/CMSIS/Core/Include")),
    "cmsis_nn": ("cmsis_nn/Include/arm_nnfunctions.h", ("cmsis_nn", "cmsis_nn/Include")),
}
REQUIRED = ("flatbuffers", "gemmlowp", "ruy")
SKIP_PARTS = ("/cortex_m_generic/", "/cortex_m_corstone_300/", "/xtensa/", "/arc_mli/", "/ceva/", "/hexagon/",
              "/riscv32_generic/", "/kernels/cmsis_nn/", "/tools/", "/examples/", "/benchmarks/", "/testing/",
              "/python/", "/integration_tests/", "/compression/", "/docs/")
SKIP_FILES = ("tensorflow/lite/micro/debug_log.cc",)


@dataclass(frozen=True)
class Tree:
    """Where a TFLM tree's sources and third-party headers are."""

    root: Path  # holds tensorflow/
    third_party: dict[str, Path]  # name -> the folder the include paths start from

    def includes(self, cmsis_nn: bool) -> list[str]:
        dirs = [self.root, *dict.fromkeys(self.third_party.values())]
        for name, (_, subdirs) in THIRD_PARTY.items():
            if name in self.third_party and (cmsis_nn or name not in ("cmsis", "cmsis_nn")):
                dirs += [self.third_party[name] / d for d in subdirs]
        return [f"-I{d}" for d in dirs]

    def sources(self, cmsis_nn: bool) -> list[Path]:
        """The library's .cc files (reference kernels replaced by CMSIS-NN's) and CMSIS-NN's .c files."""
        found = []
        for path in sorted((self.root / "tensorflow").rglob("*.cc")):
            rel = path.relative_to(self.root).as_posix()
            if (rel.endswith(("_test.cc", "_benchmark.cc")) or rel in SKIP_FILES
                    or any(part in f"/{rel}" for part in SKIP_PARTS)):
                continue
            found.append(path)
        if not cmsis_nn:
            return found
        nn_dir = self.root / "tensorflow/lite/micro/kernels/cmsis_nn"
        nn = {p.name: p for p in nn_dir.glob("*.cc")}
        kernels = self.root / "tensorflow/lite/micro/kernels"
        found = [nn[p.name] if p.parent == kernels and p.name in nn else p for p in found]
        c_sources = sorted(p for p in (self.third_party["cmsis_nn"] / "cmsis_nn/Source").rglob("*.c")
                           if not p.name.endswith(("_f16.c", "_f32.c")) and p.name != "arm_nntables_flt.c")
        return found + c_sources


def find_tree(path: str | Path | None, cmsis_nn: bool) -> Tree:
    """The tree at ``path`` (or ``$TFLM_DIR``), checked for what the build needs; one error line otherwise."""
    given = path or os.environ.get("TFLM_DIR")
    if not given:
        raise TinyqError("no TensorFlow Lite Micro tree: pass --tflm DIR (tflite-micro's create_tflm_tree.py "
                         "output, the Arduino library or a tflite-micro checkout), or set TFLM_DIR")
    base = Path(given).expanduser()
    if not base.is_dir():
        raise TinyqError(f"--tflm {str(given)!r} is not a folder; give a TensorFlow Lite Micro tree")
    root = next((r for r in (base, base / "src") if (r / INTERPRETER_H).exists()), None)
    if root is None:
        raise TinyqError(f"--tflm {str(given)!r} holds no {INTERPRETER_H}: give the folder create_tflm_tree.py "
                         "wrote (or the Arduino library, or a tflite-micro checkout)")
    candidates = [root / "third_party", root / "tensorflow/lite/micro/tools/make/downloads"]
    third_party = {}
    for name, (marker, _) in THIRD_PARTY.items():
        for c in candidates:
            if (c / marker).exists():
                third_party[name] = c
                break
    needed = REQUIRED + (("cmsis", "cmsis_nn") if cmsis_nn else ())
    missing = [n for n in needed if n not in third_party]
    if missing:
        raise TinyqError(f"the TFLM tree {str(given)!r} lacks third-party code ({', '.join(missing)}): make it with "
                         "create_tflm_tree.py" + (" for the cmsis_nn kernels (--kernels cmsis-nn)" if cmsis_nn else ""))
    if cmsis_nn and not (root / "tensorflow/lite/micro/kernels/cmsis_nn").is_dir():
        raise TinyqError(f"the TFLM tree {str(given)!r} has no CMSIS-NN kernels (tensorflow/lite/micro/kernels/"
                         "cmsis_nn): make it with create_tflm_tree.py --kernel_optimization_type cmsis_nn, or pass "
                         "--kernels reference")
    return Tree(root.resolve(), {k: v.resolve() for k, v in third_party.items()})


def flags(board: Board, cmsis_nn: bool, logs: bool) -> dict[str, list[str]]:
    """Compiler flags (``c``, ``cc``) as TFLM's release builds use them; ``logs`` keeps TFLM's messages."""
    common = [*board.cpu_flags, *board.compile_flags, "-ffunction-sections", "-fdata-sections", "-fno-unwind-tables",
              "-fno-asynchronous-unwind-tables", "-funsigned-char", "-DTF_LITE_STATIC_MEMORY",
              "-DTF_LITE_DISABLE_X86_NEON", "-DNDEBUG", "-Wno-unused-parameter"]
    if not logs:
        common.append("-DTF_LITE_STRIP_ERROR_STRINGS")
    if cmsis_nn:
        common += ["-DCMSIS_NN", "-DARM_NN_ENABLE_F16=0", "-DARM_NN_ENABLE_F32=0"]
    return {"c": ["-std=c11", *common],
            "cc": ["-std=c++17", "-fno-rtti", "-fno-exceptions", "-fno-threadsafe-statics", *common]}


def build_dir(tree: Tree, board: Board, kernels: str, logs: bool) -> Path:
    key = hashlib.sha256(f"{tree.root}|{board.name}|{kernels}|{logs}".encode()).hexdigest()[:12]
    return cache_root() / "device" / f"{board.name}-{kernels}-{'logs' if logs else 'nolog'}-{key}"


def _makefile(tree: Tree, board: Board, cmsis_nn: bool, logs: bool, sources: list[Path]) -> str:
    f = flags(board, cmsis_nn, logs)
    inc = " ".join(tree.includes(cmsis_nn))
    objs, rules = [], []
    for src in sources:
        rel = src.relative_to(tree.root) if src.is_relative_to(tree.root) else Path("ext") / src.name
        obj = f"obj/{rel.with_suffix('.o').as_posix()}"
        objs.append(obj)
        fast = "/kernels/" in src.as_posix() or "cmsis_nn/Source" in src.as_posix()
        tool, kind = ("$(CXX)", "cc") if src.suffix == ".cc" else ("$(CC)", "c")
        rules.append(f"{obj}: {src} Makefile\n\t@mkdir -p $(dir $@)\n\t{tool} {' '.join(f[kind])} {'-O2' if fast else '-Os'} "
                     f"-MMD -MP {inc} -c $< -o $@\n")
    return ("# Generated by tinyq: TFLM as a static library for one board and kernel set.\n"
            "CC := arm-none-eabi-gcc\nCXX := arm-none-eabi-g++\nAR := arm-none-eabi-ar\n"
            f"OBJS := {' '.join(objs)}\n\nlibtflm.a: $(OBJS)\n\t@rm -f $@\n\t$(AR) rcs $@ $^\n\n"
            + "\n".join(rules) + "\n-include $(OBJS:.o=.d)\n")


def build_library(tree: Tree, board: Board, kernels: str, logs: bool, log: Log, jobs: int | None = None) -> Path:
    """``libtflm.a`` for ``board`` with ``kernels``, built or brought up to date in its cache folder."""
    cmsis_nn = kernels == "cmsis-nn"
    folder = build_dir(tree, board, kernels, logs)
    folder.mkdir(parents=True, exist_ok=True)
    sources = tree.sources(cmsis_nn)
    makefile = _makefile(tree, board, cmsis_nn, logs, sources)
    path = folder / "Makefile"
    if not path.exists() or path.read_text() != makefile:
        path.write_text(makefile)
    lib = folder / "libtflm.a"
    up_to_date = subprocess.run(["make", "-q", "-C", str(folder)], capture_output=True).returncode == 0
    if not up_to_date:
        log(f"device: building TFLM ({len(sources)} sources, {kernels} kernels, {board.core}) in {folder}; "
            "once per board, kernel set and tree")
    done = subprocess.run(["make", "-C", str(folder), f"-j{jobs or os.cpu_count() or 2}"], capture_output=True,
                          text=True)
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if "error" in line.lower()][:1] or done.stderr.splitlines()[-1:]
        raise TinyqError(f"TFLM did not compile for {board.core}: {(last[0] if last else 'make failed')[:300]}")
    return lib
