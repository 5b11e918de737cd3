"""Weight and activation quantizers: one module per family, one registry by name."""
from tinyq.quantizers import registry
from tinyq.quantizers.base import WeightQuantizer, mse_scale
from tinyq.quantizers.grid import Grid, grid

__all__ = ["registry", "WeightQuantizer", "mse_scale", "Grid", "grid", "method_callbacks"]


def method_callbacks(model, epochs: int, steps: int) -> list:
    """Callbacks the model's methods need while training (QGT's ramp), found by their variables."""
    from tinyq.quantizers.qgt import QGTRamp

    names = {v.name.rsplit("/", 1)[-1] for v in model.variables}
    return [QGTRamp(epochs, steps)] if any("qgt_ramp" in n for n in names) else []
