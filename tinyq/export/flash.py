"""Flash bytes of the exported sources on a Cortex-M4, from ``arm-none-eabi-gcc`` and ``-size``."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CPU_FLAGS = ("-mcpu=cortex-m4", "-mthumb", "-Os")


def toolchain() -> str | None:
    """Why flash cannot be measured here, or None when arm-none-eabi-gcc and -size are on PATH."""
    missing = [t for t in ("arm-none-eabi-gcc", "arm-none-eabi-size") if shutil.which(t) is None]
    return f"{' and '.join(missing)} not found (Debian: apt install gcc-arm-none-eabi)" if missing else None


def compile_for_cortex_m(files: dict[str, str], folder: Path, warnings_as_errors: bool = True) -> dict[str, Path]:
    """Compile each C/C++ source of ``files`` (name -> text) to an object in ``folder``."""
    for fname, text in files.items():
        (folder / fname).write_text(text)
    objects = {}
    for fname in files:
        if not fname.endswith((".c", ".cc", ".cpp")):
            continue
        compiler = "arm-none-eabi-gcc" if fname.endswith(".c") else "arm-none-eabi-g++"
        std = ["-std=c11"] if fname.endswith(".c") else ["-std=c++17", "-fno-exceptions", "-fno-rtti"]
        obj = folder / (fname + ".o")
        cmd = [compiler, *CPU_FLAGS, *std, "-Wall", "-Wextra", *(["-Werror"] if warnings_as_errors else []),
               "-c", fname, "-o", obj.name]
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
        objects[fname] = obj
    return objects


def section_sizes(obj: Path) -> dict[str, int]:
    """``arm-none-eabi-size`` (Berkeley format) of one object: text (code + rodata), data, bss."""
    out = subprocess.run(["arm-none-eabi-size", str(obj)], capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(v) for v in out.splitlines()[1].split()[:3])
    return {"text": text, "data": data, "bss": bss}


def flash_bytes(files: dict[str, str]) -> dict[str, int] | str:
    """Flash (text + data) per source file of ``files`` for a Cortex-M4, or why it cannot be measured."""
    why = toolchain()
    if why:
        return why
    try:
        with tempfile.TemporaryDirectory(prefix="tinyq-flash-") as tmp:
            objects = compile_for_cortex_m(files, Path(tmp))
            return {fname: (lambda s: s["text"] + s["data"])(section_sizes(obj)) for fname, obj in objects.items()}
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        # flash is a report, not the export: a failed measurement must not cost the user the files
        return f"compiling for cortex-m4 failed ({str(e).splitlines()[0][:160]})"
