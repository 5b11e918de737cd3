"""Weight and activation quantizers: one module per family, one registry by name."""
from tinyq.quantizers import registry
from tinyq.quantizers.base import WeightQuantizer, mse_scale
from tinyq.quantizers.grid import Grid, grid

__all__ = ["registry", "WeightQuantizer", "mse_scale", "Grid", "grid"]
