"""How a run quantizes: the options ``train``, ``quantize`` and ``plan`` share, validated before any data is read."""
from __future__ import annotations

from dataclasses import dataclass

from tinyq.errors import TinyqError
from tinyq.mixed.budget import require_choice
from tinyq.plan import KEEP_CHOICES, chooser, describe_plan
from tinyq.spec import QuantSpec


@dataclass(frozen=True)
class QuantOptions:
    """Weight bits and method, activation bits, the layers kept at 8 bits, and what chooses per-layer
    widths instead (``learn_bits``, ``size_budget`` in file bytes, or a ``plan`` file): at most one."""

    bits: int = 8
    method: str = "ste"
    act_bits: int = 8
    keep_8bit: tuple[str, ...] = KEEP_CHOICES
    learn_bits: bool = False  # search per-layer widths up to --bits before QAT (tinyq.mixed.learnbits)
    size_budget: int | None = None  # file bytes; per-layer widths by the knapsack (tinyq.mixed.budget)
    plan: str | None = None  # a plan file to follow (tinyq plan --out)

    def __post_init__(self) -> None:
        QuantSpec(method=self.method, weight_bits=self.bits, act_bits=self.act_bits, learn_bits=self.learn_bits)
        chosen = [o for o, on in (("--learn-bits", self.learn_bits), ("--size-budget", self.size_budget),
                                  ("--plan", self.plan)) if on]
        if len(chosen) > 1:
            raise TinyqError(f"{' and '.join(chosen)} each choose the per-layer widths: pass one of them")
        if self.size_budget is not None and self.size_budget <= 0:
            raise TinyqError(f"--size-budget must be a positive size such as 64KB; got {self.size_budget}")
        if self.learn_bits and self.bits <= 2:
            raise TinyqError("--learn-bits with --bits 2 has nothing to learn: --bits is the most a layer may keep; "
                             "pass --bits 4 or 8")
        if self.size_budget is not None:
            require_choice(self.bits)

    @staticmethod
    def check_run(seed: int, limit: int | None) -> None:
        """The seed and image limit a run takes (the command line checks them too, before any import)."""
        if not 0 <= seed < 2 ** 32:
            raise TinyqError(f"--seed must lie in 0..2^32-1; got {seed}")
        if limit is not None and limit < 1:
            raise TinyqError(f"--limit must be at least 1 image; got {limit}")

    def describe(self, chosen_by: str | None = None) -> str:
        """One log line: the widths and methods (``chosen_by`` overrides what chose per-layer widths)."""
        return describe_plan(self.bits, self.act_bits, self.method, self.keep_8bit,
                             chosen_by or chooser(self.learn_bits, self.size_budget, self.plan))
