"""The input contract: what the model expects, carried from recipe to header and ``check``."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tinyq.errors import TinyqError


MAX_RESOLUTION = 1024


@dataclass(frozen=True)
class InputContract:
    """Resolution, channels, pixel value range and label order of a classifier.

    Pixels (uint8) become model inputs as ``lo + p / 255 * (hi - lo)``.
    """

    resolution: int = 96
    channels: int = 3
    value_range: tuple[float, float] = (0.0, 1.0)
    labels: tuple[str, ...] = ("non_person", "person")

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise TinyqError(f"unsupported channels {self.channels}: expected one of 1, 3")
        if self.resolution < 8:
            raise TinyqError(f"resolution {self.resolution} is too small: use at least 8")
        if self.resolution > MAX_RESOLUTION:  # images are decoded at this size: a lying file must not ask for gigabytes
            raise TinyqError(f"an input of {self.resolution}x{self.resolution} is past what tinyq runs "
                             f"(at most {MAX_RESOLUTION}x{MAX_RESOLUTION}); a microcontroller model this large is "
                             "not one tinyq made")
        object.__setattr__(self, "value_range", tuple(float(v) for v in self.value_range))
        object.__setattr__(self, "labels", tuple(self.labels))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.resolution, self.resolution, self.channels)

    def to_float(self, pixels: np.ndarray) -> np.ndarray:
        lo, hi = self.value_range
        return (lo + pixels.astype(np.float32) / 255.0 * (hi - lo)).astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InputContract":
        return cls(**d)
