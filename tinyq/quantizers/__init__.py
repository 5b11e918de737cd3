"""Weight and activation quantizers: one module per family, one registry by name."""
from tinyq.quantizers import registry
from tinyq.quantizers.base import WeightQuantizer, mse_scale
from tinyq.quantizers.grid import Grid, grid

__all__ = ["registry", "WeightQuantizer", "mse_scale", "Grid", "grid", "method_callbacks"]


def method_callbacks(model, epochs: int, steps: int) -> list:
    """Callbacks the model's quantizers need while training (warm-up, QGT's ramp), found by their variables.

    Layers that start from trained quantizers (``model.carried``, :func:`tinyq.qat.start_from`)
    are quantized already: they skip the warm-up, which would start them from their latent
    weights alone, a network nobody ran (a 2-bit person-detect trained with tinyq layers: 58%
    on people96/val as latent floats, 90% as trained; 2 epochs of ``tinyq quantize`` reach
    88.7% on people96/test in TFLM with the warm-up, 89.8% without).
    """
    from tinyq.qat import quantized_layers
    from tinyq.quantizers.qgt import QGTRamp, WarmupRamp

    carried = set(getattr(model, "carried", ()))
    settled = {id(qvars["quant_ramp"]) for layer, _, _, qvars in quantized_layers(model) if layer.layer.name in carried}
    names = {v.name.split(":")[0] for v in model.variables if id(v) not in settled}
    return [cls(epochs, steps, skip=settled) for cls in (WarmupRamp, QGTRamp) if any(n.endswith(cls.suffix) for n in names)]
