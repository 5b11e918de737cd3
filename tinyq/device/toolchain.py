"""The programs ``tinyq device`` runs, each checked before any work, named by its Debian package."""
from __future__ import annotations

import shutil

from tinyq.errors import TinyqError

PACKAGES = {
    "arm-none-eabi-gcc": "gcc-arm-none-eabi", "arm-none-eabi-g++": "gcc-arm-none-eabi",
    "arm-none-eabi-ar": "binutils-arm-none-eabi", "arm-none-eabi-size": "binutils-arm-none-eabi",
    "qemu-system-arm": "qemu-system-arm", "make": "make",
}


def require(*programs: str) -> dict[str, str]:
    """``{program: path}``; a one-line error naming the first missing program and its package."""
    found = {}
    for program in programs:
        path = shutil.which(program)
        if path is None:
            package = PACKAGES.get(program, program)
            raise TinyqError(f"{program} is not installed: install it (Debian/Ubuntu: apt-get install {package}"
                             + (" libnewlib-arm-none-eabi" if package == "gcc-arm-none-eabi" else "") + ")")
        found[program] = path
    return found


def require_newlib(gcc: str) -> None:
    """Arm's C library, which the toolchain package alone does not bring on Debian."""
    import subprocess

    out = subprocess.run([gcc, "-print-file-name=libc.a"], capture_output=True, text=True).stdout.strip()
    if out in ("", "libc.a"):
        raise TinyqError("the Arm C library (newlib) is missing: install it (Debian/Ubuntu: apt-get install "
                         "libnewlib-arm-none-eabi)")
