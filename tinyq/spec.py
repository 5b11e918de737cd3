"""QuantSpec: how one layer is quantized. A plan is ``dict[layer_name, QuantSpec]``."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from tinyq.errors import TinyqError

WEIGHT_BITS = range(2, 9)
ACT_BITS = range(2, 9)


@dataclass(frozen=True)
class QuantSpec:
    """Weight method and bit widths for one layer, validated on construction."""

    method: str = "ste"
    weight_bits: int = 8
    act_bits: int = 8
    per_channel: bool = True
    learn_bits: bool = False  # learn the width, up to weight_bits (CPQ / DropBits); see tinyq.learnbits

    def __post_init__(self) -> None:
        from tinyq.quantizers import registry  # late: the registry imports TensorFlow

        combination = registry.parse(self.method)  # "expected one of", or why a combination is wrong
        if self.weight_bits not in WEIGHT_BITS:
            raise TinyqError(
                f"unsupported weight bits {self.weight_bits}: tinyq quantizes weights to 2..8 bits; "
                "pass --bits between 2 and 8 (2, 4 and 8 fill their storage; 3 is stored as 4, 5-7 as 8)")
        if self.act_bits not in ACT_BITS:
            raise TinyqError(f"unsupported activation bits {self.act_bits}: tinyq quantizes activations to 2..8 "
                             "bits; pass --act-bits between 2 and 8")
        if self.learn_bits and not getattr(combination.weights.quantizer, "learns_bits", False):
            learners = [n for n, m in registry.METHODS.items() if getattr(m.quantizer, "learns_bits", False)
                        and m.kind == "weights"]
            raise TinyqError(f"--learn-bits needs a weight method that learns bit widths ({', '.join(learners)}); "
                             f"got --method {self.method}: pass e.g. --method {learners[0]}")
        if self.act_bits != 8 and combination.activations is None:
            raise TinyqError(f"--act-bits {self.act_bits} needs an activation quantizer that learns its clip: "
                             f"add one to --method, e.g. --method {self.method}+cgpact (or pact)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantSpec":
        return cls(**d)
