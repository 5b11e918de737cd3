"""Recipe ``person-detect``: MobileNetV1 width 0.25 at 96x96, the MLPerf Tiny / TFLM network.

Card: ``person_detect.md`` beside this file.
"""
from tinyq.recipes import Recipe

# (pointwise filters at width 1.0, depthwise stride) for the 13 separable blocks
BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
          (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


def build(resolution: int = 96, channels: int = 3, num_classes: int = 2, alpha: float = 0.25):
    from tinyq._tf import keras

    L = keras.layers
    # momentum 0.9, not Keras' 0.99: with a few thousand images an epoch is ~30 steps, and
    # the moving statistics (which BN folding bakes into the deployed weights) must settle
    # within the first epochs.
    bn = dict(momentum=0.9)
    inputs = keras.Input((resolution, resolution, channels), name="input")

    def conv_bn(x, filters, kernel, stride, name):
        x = L.Conv2D(int(filters * alpha), kernel, strides=stride, padding="same", use_bias=False, name=name)(x)
        x = L.BatchNormalization(name=f"{name}_bn", **bn)(x)
        return L.ReLU(6.0, name=f"{name}_relu")(x)

    x = conv_bn(inputs, 32, 3, 2, "conv1")
    for i, (filters, stride) in enumerate(BLOCKS, start=1):
        x = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = L.BatchNormalization(name=f"dw{i}_bn", **bn)(x)
        x = L.ReLU(6.0, name=f"dw{i}_relu")(x)
        x = conv_bn(x, filters, 1, 1, f"pw{i}")
    x = L.GlobalAveragePooling2D(name="pool")(x)
    x = L.Dropout(0.1, name="dropout")(x)
    x = L.Dense(num_classes, name="logits")(x)
    outputs = L.Softmax(name="probs")(x)
    return keras.Model(inputs, outputs, name="person_detect")


RECIPE = Recipe(
    name="person-detect",
    summary="person / no person, 96x96, MobileNetV1 width 0.25 (MLPerf Tiny VWW network)",
    build=build,
    resolution=96,
    labels=("non_person", "person"),
    pretrained="vww_96.h5",  # MLPerf Tiny's float model (Apache-2.0): vww_96.md
)
