"""Keras graph helpers every stage shares: which layers carry weights, their kernel and channel axis,
and how a ReLU sits next to a weight layer."""
from __future__ import annotations

from tinyq._tf import keras
from tinyq.contract import InputContract
from tinyq.errors import TinyqError

L = keras.layers
WEIGHT_LAYERS = (L.Conv2D, L.DepthwiseConv2D, L.Dense)
RELU_NAMES = ("relu", "relu6")
SUPPORTED = (L.InputLayer, L.Conv2D, L.DepthwiseConv2D, L.Dense, L.BatchNormalization, L.ReLU, L.Activation,
             L.MaxPooling2D, L.AveragePooling2D, L.GlobalAveragePooling2D, L.GlobalMaxPooling2D, L.Flatten,
             L.Reshape, L.Dropout, L.Add, L.Concatenate, L.Softmax, L.ZeroPadding2D)
ACTIVATIONS = ("linear", "relu", "relu6", "softmax")


def kernel_attr(layer) -> str:
    return "depthwise_kernel" if isinstance(layer, L.DepthwiseConv2D) else "kernel"


def channel_axis(layer) -> int | None:
    """Kernel axis of the per-channel scales (depthwise: input channels; Dense: None, per tensor)."""
    if isinstance(layer, L.DepthwiseConv2D):
        if layer.depth_multiplier != 1:
            raise TinyqError(f"layer {layer.name!r}: depthwise depth_multiplier "
                             f"{layer.depth_multiplier} is not supported; use 1")
        return 2
    if isinstance(layer, L.Dense):
        return None
    return -1


def weight_layers(model) -> list:
    """The model's Conv2D, DepthwiseConv2D and Dense layers, in model order."""
    return [layer for layer in model.layers if isinstance(layer, WEIGHT_LAYERS)]


def is_relu(layer) -> bool:
    if isinstance(layer, L.ReLU):
        return True
    return isinstance(layer, L.Activation) and getattr(layer.activation, "__name__", "") in RELU_NAMES


def inbound(layer) -> list:
    """The layers ``layer``'s first call takes its inputs from."""
    nodes = layer._inbound_nodes
    found = nodes[0].inbound_layers if nodes else []
    return found if isinstance(found, list) else [found]


def followed_by_relu(layer) -> bool:
    outbound = layer._outbound_nodes
    return len(outbound) == 1 and is_relu(outbound[0].outbound_layer)


def weight_layer_before(layer, through=()):
    """The weight layer whose output ``layer`` takes (passing through layers of the types ``through``), or None."""
    source = inbound(layer)
    while through and len(source) == 1 and isinstance(source[0], through):
        source = inbound(source[0])
    return source[0] if len(source) == 1 and isinstance(source[0], WEIGHT_LAYERS) else None


def check_supported(model: keras.Model, allow_float: bool = False) -> list[str]:
    """Names of the layers tinyq cannot quantize, as they appear after activations are split out.

    Without ``allow_float`` the first one is a TinyqError naming it; with it they are
    returned, to be left out of QAT (the converter then gives them int8 ranges from the
    representative images where TFLite has an int8 kernel, float kernels otherwise).
    """
    found: list[tuple[str, str]] = []
    for layer in model.layers:
        if type(layer) not in SUPPORTED:
            found.append((layer.name, f"layer {layer.name!r} ({type(layer).__name__}) cannot be quantized by tinyq; "
                                      f"supported: {', '.join(sorted({c.__name__ for c in SUPPORTED}))}"))
            continue
        act = getattr(layer, "activation", None)
        name = getattr(act, "__name__", None)
        if act is not None and name not in ACTIVATIONS:
            # a weight layer's activation becomes its own layer (tinyq.fold.split_activations)
            split = layer.name if isinstance(layer, L.Activation) else f"{layer.name}_activation"
            found.append((split, f"layer {layer.name!r} uses activation {name!r}; tinyq quantizes "
                                 f"{', '.join(ACTIVATIONS)}"))
    if found and not allow_float:
        raise TinyqError(f"{found[0][1]}; or pass --allow-float to leave it out of quantization")
    return [name for name, _ in found]


def contract_of(model: keras.Model, value_range, labels) -> InputContract:
    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4 or shape[1] != shape[2] or shape[1] is None:
        raise TinyqError(f"the model's input shape {shape} is not one square image (N, H, H, C)")
    classes = model.output_shape[-1]
    if labels is None:
        labels = ("non_person", "person") if classes == 2 else tuple(f"class{i}" for i in range(classes))
    if len(labels) != classes:
        raise TinyqError(f"--labels names {len(labels)} classes, the model outputs {classes}")
    return InputContract(resolution=shape[1], channels=shape[3], value_range=tuple(value_range), labels=tuple(labels))
