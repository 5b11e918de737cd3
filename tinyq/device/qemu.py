"""Running firmware under ``qemu-system-arm -icount shift=0``: inputs through a semihosted file,
int8 outputs and instruction counts back from the runner's lines."""
from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyq.device.boards import Board
from tinyq.errors import TinyqError

SECONDS_PER_INPUT = 60  # QEMU runs a microcontroller inference in well under a second


@dataclass(frozen=True)
class DeviceRun:
    outputs: np.ndarray  # (N, classes) int8
    instructions: np.ndarray  # (N,) per inference, as the board timer counts them
    arena_used: int
    stack_used: int
    seconds: float


def run(elf: Path, board: Board, inputs: np.ndarray) -> DeviceRun:
    """Run ``elf`` on the int8 ``inputs`` (N, ...) under QEMU; raises with the runner's own error line."""
    import time

    with tempfile.TemporaryDirectory(prefix="tinyq-device-") as tmp:
        path = Path(tmp) / "inputs.bin"
        path.write_bytes(np.ascontiguousarray(inputs, np.int8).tobytes())
        if "," in str(path) or " " in str(path):
            raise TinyqError(f"the temporary folder {tmp!r} holds a comma or space, which QEMU's semihosting "
                             "arguments cannot carry; set TMPDIR to a plain path")
        cmd = ["qemu-system-arm", "-M", board.machine, "-nographic", "-monitor", "none", "-serial", "none",
               "-icount", "shift=0", "-semihosting-config", f"enable=on,target=native,arg=runner,arg={path}",
               "-kernel", str(elf)]
        t0 = time.time()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30 + SECONDS_PER_INPUT * len(inputs))
        except subprocess.TimeoutExpired:
            raise TinyqError(f"the firmware did not finish {len(inputs)} inferences under QEMU in time") from None
        seconds = time.time() - t0
    return parse(done.stdout + done.stderr, done.returncode, len(inputs), seconds)


def parse(text: str, returncode: int, n: int, seconds: float = 0.0) -> DeviceRun:
    """The runner's lines (``arena_used_bytes``, ``out I INSNS v...``, ``stack_used_bytes``, ``done``)."""
    outputs, counts, arena, stack = [], [], None, None
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "error:" or line.startswith("error:"):
            raise TinyqError(f"the firmware stopped on the board: {line[len('error:'):].strip()}")
        if words[0] == "arena_used_bytes":
            arena = int(words[1])
        elif words[0] == "out":
            counts.append(int(words[2]))
            outputs.append([int(v) for v in words[3:]])
        elif words[0] == "stack_used_bytes":
            stack = int(words[1])
    if "done" not in text.split() or returncode != 0 or len(outputs) != n:
        tail = text.strip().splitlines()[-1:] or ["no output"]
        raise TinyqError(f"the firmware did not run to the end under QEMU (exit {returncode}, "
                         f"{len(outputs)} of {n} inferences): {tail[0][:200]}")
    return DeviceRun(np.array(outputs, np.int8), np.array(counts, np.int64), int(arena or 0), int(stack or 0),
                     seconds)
