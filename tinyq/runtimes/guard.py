"""Try a user's .tflite in a child process first, so a damaged file cannot crash or hang tinyq.

TFLM has no flatbuffer verifier: it trusts every offset, shape, index and op option in the
file. One flipped bit in an activation's shape made it write past its arena and die with
SIGSEGV in ``tinyq export``, and one changed offset made it loop for minutes (found by fuzzing,
tests/test_fuzz.py). :func:`tinyq.tflite.flatbuffer.parse` rejects the indices and sizes it can
see, but only running shows the rest. So the commands that run a file they did not write
(check, export, report) first run it once here:

- LiteRT's flatbuffer verifier (its constructor) checks every offset and length.
- TFLM loads the file and runs one inference on zeros. A signal or a hang becomes a one-line error,
  and so does anything a kernel prints: a MEAN over an axis its input lacks prints a failed
  check and TFLM's invoke still returns OK, with outputs of zeros.
- LiteRT, where it has every op (no DECODE): its kernels compute each tensor's shape when they
  allocate; a file whose declared shapes differ from those lies about its structure (an
  output declared 43,778 wide behind a 2-wide FULLY_CONNECTED: TFLM reads past the real values).
"""
from __future__ import annotations

import functools
import signal
import subprocess
import sys
from pathlib import Path

from tinyq.errors import TinyqError
from tinyq.tflite import flatbuffer

TIMEOUT_S = 300  # one inference of a microcontroller model takes well under a second on a host
_CHILD = r'''
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
data = sys.stdin.buffer.read()
from ai_edge_litert.interpreter import Interpreter, OpResolverType
try:  # LiteRT verifies the flatbuffer before anything reads it; TFLM does not (one bad offset hung it)
    lite = Interpreter(model_content=data, num_threads=1,
                       experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
except Exception as e:  # other refusals (a DECODE op, compacted zero points) are no verdict on the bytes
    if "not a valid Flatbuffer" in str(e):
        print("its flatbuffer does not verify (an offset, length or alignment is wrong)")
        sys.exit(3)
    lite = None
from tinyq.logs import captured_fd2
from tinyq.runtimes import tflm_interpreter
try:
    it = tflm_interpreter(data)  # the arenas the command itself will try
    d = it.get_input_details(0)
    it.set_input(np.zeros(d["shape"], d["dtype"]), 0)
    with captured_fd2() as said:
        it.invoke()
except Exception:  # a clean refusal (an arena too small, an op TFLM lacks): the command reports it itself
    sys.exit(0)
if said[0].strip():  # a kernel's failed check is printed, yet invoke returns OK with outputs of zeros
    print(f"TFLM reported an error running it ({said[0].strip().splitlines()[-1].strip()})")
    sys.exit(3)
if lite is not None:
    from tinyq.tflite import flatbuffer
    try:
        lite.allocate_tensors()
    except Exception:  # what LiteRT cannot allocate, check reports itself
        sys.exit(0)
    declared = {t.index: t.shape for t in flatbuffer.parse(data).tensors}
    for t in lite.get_tensor_details():
        shape = tuple(int(v) for v in t["shape"])
        if t["index"] in declared and shape != declared[t["index"]]:
            print(f"tensor {t['index']} is declared {declared[t['index']]} but its op computes {shape}")
            sys.exit(3)
'''


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


@functools.lru_cache(maxsize=16)
def verdict(data: bytes) -> str | None:
    """What is wrong with running ``data``, or None; once per distinct file in a process."""
    args = [sys.executable, "-c", _CHILD, str(Path(__file__).resolve().parents[2])]  # the folder holding tinyq/
    try:  # the bytes go through a pipe: no temporary file to leave behind or to fill a disk with
        child = subprocess.run(args, input=data, capture_output=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"TFLM did not finish one inference in {TIMEOUT_S} s"
    out, err = child.stdout.decode(errors="replace"), child.stderr.decode(errors="replace")
    if child.returncode == -signal.SIGINT:  # Ctrl-C reached the child first: the user's stop, not the file's fault
        raise KeyboardInterrupt
    if child.returncode < 0:
        return f"TFLM crashed on it ({_signal_name(child.returncode)})"
    if child.returncode == 3:
        return out.strip().splitlines()[-1]
    if child.returncode != 0:
        return f"the runtime check failed (exit {child.returncode}): {err.strip()[-200:]}"
    return None


def require_runnable(data: bytes, what: str) -> None:
    """A one-line error unless ``data`` verifies as a flatbuffer, TFLM runs it once, and LiteRT
    (where it can load it) computes the shapes it declares."""
    flatbuffer.parse(data, what)
    problem = verdict(data)
    if problem:
        raise TinyqError(f"{what} is damaged: {problem}; convert it again (tinyq convert RUN)")
