"""One static buffer for every activation, placed ahead of time by tensor lifetimes.

A tensor lives from the step that writes it to the last step that reads it. Largest first,
each takes the lowest offset (4-byte aligned) that overlaps no tensor alive at the same time
(greedy by size, as TFLM's GreedyMemoryPlanner). RESHAPE writes nothing: its output is its
input, in place. The model's input and output are the caller's buffers, not in the plan.
"""
from __future__ import annotations

from dataclasses import dataclass

from tinyq.aot.lower import Program

ALIGN = 4


@dataclass(frozen=True)
class MemoryPlan:
    offsets: dict[int, int]  # tensor -> byte offset in the buffer
    size: int  # bytes of the buffer
    alias: dict[int, int]  # a RESHAPE's output -> the tensor whose bytes it is


def plan_memory(program: Program) -> MemoryPlan:
    alias: dict[int, int] = {}

    def root(t: int) -> int:
        while t in alias:
            t = alias[t]
        return t

    for step in program.steps:
        if step.op == "reshape":
            alias[step.output] = step.inputs[0]
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, step in enumerate(program.steps):
        for t in step.inputs:
            last[root(t)] = i
        out = root(step.output)
        first.setdefault(out, i)
        last.setdefault(out, i)
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last)
    offsets: dict[int, int] = {}
    own = [t for t in first if t not in (program.input, root(program.output))]
    for t in sorted(own, key=lambda t: (-program.tensors[t].size, first[t])):
        size = -(-program.tensors[t].size // ALIGN) * ALIGN
        busy = sorted((o, o + s) for o, s, f, l in placed if not (l < first[t] or last[t] < f))
        offset = 0
        for lo, hi in busy:
            if offset + size <= lo:
                break
            offset = max(offset, hi)
        placed.append((offset, size, first[t], last[t]))
        offsets[t] = offset
    return MemoryPlan(offsets, max((o + s for o, s, _, _ in placed), default=0), alias)
