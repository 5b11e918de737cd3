"""Weight and activation quantizers: one module per family, one registry by name."""
from tinyq.quantizers import registry
from tinyq.quantizers.base import WeightQuantizer, mse_scale
from tinyq.quantizers.grid import Grid, grid

__all__ = ["registry", "WeightQuantizer", "mse_scale", "Grid", "grid", "method_callbacks"]


def method_callbacks(model, epochs: int, steps: int) -> list:
    """Callbacks the model's quantizers need while training (warm-up, QGT's ramp), found by their variables."""
    from tinyq.quantizers.qgt import QGTRamp, WarmupRamp

    names = {v.name.split(":")[0] for v in model.variables}
    return [cls(epochs, steps) for cls in (WarmupRamp, QGTRamp) if any(n.endswith(cls.suffix) for n in names)]
