"""One static buffer for every activation, planned ahead of time.

The model's input and output are the caller's buffers, not in the plan; RESHAPE writes
nothing (its output is its input). A chain of steps (each reads only the one before, as
tinyq's networks are) is planned in place where a kernel allows it:

- a depthwise conv (depth multiplier 1) writes each channel over the same channel of its
  input, which the kernel first copies to a plane bordered with its padding (``plane_bytes``);
- a pointwise conv (1x1, stride 1, no padding) whose weights fit the kernel's rows writes
  pixel ``p`` at ``p * C_out``: from the first pixel when it narrows its input, from the last
  when it widens it, each pixel's input copied before its output is written;

and otherwise the output goes below or above its input at the buffer's ends, so the buffer
is the largest that one step needs. Any other program: a tensor lives from the step that
writes it to the last that reads it and, largest first, takes the lowest 4-byte-aligned
offset free for its lifetime (as TFLM's GreedyMemoryPlanner).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinyq.aot.lower import Program, Step

ALIGN = 4


@dataclass(frozen=True)
class MemoryPlan:
    offsets: dict[int, int]  # tensor -> byte offset in the buffer
    size: int  # bytes of the buffer
    alias: dict[int, int]  # a RESHAPE's output -> the tensor whose bytes it is
    in_place: frozenset[int] = frozenset()  # steps (by index) that write over their input
    plane_bytes: int = 0  # the depthwise kernel's channel plane


def row_capacity(program: Program) -> int:
    """int16 elements of one kernel row: the largest conv / fully connected kernel (codegen's TQ_MAX_ROW)."""
    rows = [int(np.prod(s.params["weights"].shape[1:3])) if s.op == "depthwise" else
            int(np.prod(s.params["weights"].shape[1:])) for s in program.steps if s.op in ("conv", "depthwise", "fc")]
    return max(rows or [1])


def resident_rows(program: Program, step: Step) -> bool:
    """Whether every output channel's row of a conv fits the kernel's rows at once (four rows of the
    largest kernel; channels in fours)."""
    w = step.params["weights"]
    return -(-w.shape[0] // 4) * 4 * int(np.prod(w.shape[1:])) <= 4 * row_capacity(program)


def can_write_in_place(program: Program, step: Step) -> bool:
    """Whether the kernel of ``step`` can write its output over its input (module docstring)."""
    p = step.params
    if step.op == "depthwise":
        return p["depth_multiplier"] == 1
    if step.op != "conv":
        return False
    w = p["weights"]
    return (w.shape[1:3] == (1, 1) and tuple(p["stride"]) == (1, 1) and tuple(p["pad"]) == (0, 0)
            and tuple(p["dilation"]) == (1, 1)
            and resident_rows(program, step))


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _root(alias: dict[int, int], t: int) -> int:
    """The tensor whose bytes ``t`` is (RESHAPE outputs are their inputs)."""
    while t in alias:
        t = alias[t]
    return t


def _chain(program: Program, alias: dict[int, int]) -> bool:
    """Whether every step reads only the tensor the step before wrote (RESHAPE seen through)."""
    previous = program.input
    for step in program.steps:
        if len(step.inputs) != 1 or _root(alias, step.inputs[0]) != _root(alias, previous):
            return False
        previous = step.output
    return _root(alias, previous) == _root(alias, program.output)


def _plan_chain(program: Program, alias: dict[int, int]) -> tuple[dict[int, int], int, set[int]]:
    """Offsets, buffer size and in-place steps of a chain (module docstring)."""
    steps = [(i, s) for i, s in enumerate(program.steps) if s.op != "reshape"]
    size = {t: _aligned(program.tensors[t].size) for t in program.tensors}
    external = {program.input, program.output}
    target = max((size[s.output] for _, s in steps if s.output not in external), default=0)
    while True:  # the smallest buffer this placement fits, raised until every step fits
        offsets, in_place, fits = {}, set(), True
        where = None  # (offset, bytes) of the live input
        for i, step in steps:
            dst = step.output
            if dst == program.output:
                break
            need = size[dst]
            if where is None:
                offsets[dst] = 0
            elif can_write_in_place(program, step) and where[0] + need <= target:
                offsets[dst] = where[0]
                in_place.add(i)
            elif need <= where[0]:
                offsets[dst] = 0
            elif where[0] + where[1] + need <= target:
                offsets[dst] = target - need
            else:  # a larger buffer, strictly: the input at one end, this output at the other
                grown = max(target, where[1] + need)
                target, fits = grown if grown > target else where[0] + where[1] + need, False
                break
            where = (offsets[dst], need)
        if fits:
            return offsets, target, in_place


def _plan_greedy(program: Program, alias: dict[int, int]) -> tuple[dict[int, int], int]:
    """Offsets and buffer size by lifetimes, largest first at the lowest free offset."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, step in enumerate(program.steps):
        for t in step.inputs:
            last[_root(alias, t)] = i
        out = _root(alias, step.output)
        first.setdefault(out, i)
        last.setdefault(out, i)
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last)
    offsets: dict[int, int] = {}
    own = [t for t in first if t not in (program.input, _root(alias, program.output))]
    for t in sorted(own, key=lambda t: (-program.tensors[t].size, first[t])):
        size = _aligned(program.tensors[t].size)
        busy = sorted((o, o + s) for o, s, f, l in placed if not (l < first[t] or last[t] < f))
        offset = 0
        for lo, hi in busy:
            if offset + size <= lo:
                break
            offset = max(offset, hi)
        placed.append((offset, size, first[t], last[t]))
        offsets[t] = offset
    return offsets, max((o + s for o, s, _, _ in placed), default=0)


def plan_memory(program: Program) -> MemoryPlan:
    alias = {s.output: s.inputs[0] for s in program.steps if s.op == "reshape"}
    if _chain(program, alias):
        offsets, size, in_place = _plan_chain(program, alias)
    else:
        (offsets, size), in_place = _plan_greedy(program, alias), set()
    for t in alias:  # a RESHAPE's output is where its input is
        if _root(alias, t) in offsets:
            offsets[t] = offsets[_root(alias, t)]
    # the depthwise kernel copies each input channel's plane, in place or not
    planes = [int(np.prod(plane_shape(program, s))) for s in program.steps if s.op == "depthwise"]
    return MemoryPlan(offsets, size, alias, frozenset(in_place), max(planes or [0]))


def plane_shape(program: Program, step: Step) -> tuple[int, int]:
    """(rows, columns) of a depthwise step's bordered plane: every input position its outputs read,
    padding included, from (-pad_top, -pad_left)."""
    out, w, p = program.tensors[step.output], step.params["weights"], step.params
    return tuple((out.shape[1 + a] - 1) * p["stride"][a] + (w.shape[1 + a] - 1) * p["dilation"][a] + 1
                 for a in (0, 1))
