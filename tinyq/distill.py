"""Knowledge distillation from the float model into its quantized copy.

Loss per sample: ``a * KL(p_teacher || p_student) + (1 - a) * CE(y, p_student) + f * F`` on
the models' softmax outputs (Hinton et al. 2015, arXiv 1503.02531, at temperature 1). With
``a = 1`` labels are not used, so any images serve; the teacher runs in inference mode.

``F`` matches features: for every ReLU output ``l`` of the BN-folded float model and the
student's output at the same layer, ``F = mean_l ||s_l - t_l||^2 / mean(t_l^2)`` (each layer's
squared error relative to its mean square over the batch, so every layer weighs alike). Why:
a person / no-person softmax gives about one number per image to learn from, and on
distillation images unlike the target scenes the student learns to agree
with the teacher on those images only; matching every layer's activations is a much denser
signal (feature imitation as in FitNets, Romero et al. 2015, arXiv 1412.6550, and block-wise
reconstruction in low-bit PTQ, BRECQ, Li et al. 2021, arXiv 2102.05426).
"""
from __future__ import annotations

from tinyq._tf import keras, tf
from tinyq.graph import is_relu


def relative_feature_error(student: tf.Tensor, teacher: tf.Tensor) -> tf.Tensor:
    """Per sample, ``mean((s - t)^2) / (mean over the batch of t^2 + 1e-8)``."""
    axes = list(range(1, len(student.shape)))
    return tf.reduce_mean(tf.square(student - teacher), axis=axes) / (tf.reduce_mean(tf.square(teacher)) + 1e-8)


def matched_features(student: keras.Model, folded: keras.Model) -> dict[str, keras.layers.Layer]:
    """The folded model's ReLU layers that the student has too: ``{name: the student's wrapper}``."""
    wrappers = {layer.layer.name: layer for layer in student.layers if hasattr(layer, "layer")}
    return {layer.name: wrappers[layer.name] for layer in folded.layers if is_relu(layer) and layer.name in wrappers}


class Distiller(keras.Model):
    """Trains ``student`` toward ``teacher`` (frozen) and the labels; evaluates the student.

    ``features > 0`` with ``folded`` (the BN-folded float model the student was made from, same
    layer names and shapes) adds the feature term ``features * F``.
    """

    def __init__(self, student: keras.Model, teacher: keras.Model, alpha: float, features: float = 0.0,
                 folded: keras.Model | None = None) -> None:
        super().__init__()
        self.student, self.teacher, self.alpha = student, teacher, float(alpha)
        self.teacher.trainable = False
        matched = matched_features(student, folded) if features > 0 and folded is not None else {}
        self.features = float(features) if matched else 0.0
        if matched:
            folded.trainable = False
            # the folded model's softmax equals the teacher's, so one forward gives both
            self.t_probe = keras.Model(folded.inputs, [folded.output] + [folded.get_layer(n).output for n in matched])
            self.s_probe = keras.Model(student.inputs, [student.output] + [w.output for w in matched.values()])
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy]

    def call(self, x, training=False):
        return self.student(x, training=training)

    def _loss(self, x, y, training: bool):
        if self.features:
            t = self.t_probe(x, training=False)
            s = self.s_probe(x, training=training)
            p_teacher, p_student = t[0], s[0]
            errors = [relative_feature_error(a, b) for a, b in zip(s[1:], t[1:])]
            loss = self.features * tf.add_n(errors) / len(errors)
        else:
            p_teacher = self.teacher(x, training=False)
            p_student = self.student(x, training=training)
            loss = 0.0
        loss += self.alpha * keras.losses.kl_divergence(p_teacher, p_student)
        if self.alpha < 1.0:
            loss += (1.0 - self.alpha) * keras.losses.sparse_categorical_crossentropy(y, p_student)
        return tf.reduce_mean(loss), p_student

    def _record(self, loss, y, p_student):
        self.loss_tracker.update_state(loss)
        self.accuracy.update_state(y, p_student)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss, p_student = self._loss(x, y, training=True)
            total = loss + tf.add_n(self.student.losses) if self.student.losses else loss
            # replicas' gradients are summed (tf.distribute): each contributes its share of the mean, as
            # Keras scales its compiled losses
            total = total / tf.distribute.get_strategy().num_replicas_in_sync
        variables = self.student.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(total, variables), variables))
        return self._record(loss, y, p_student)

    def test_step(self, data):
        x, y = data
        loss, p_student = self._loss(x, y, training=False)
        return self._record(loss, y, p_student)
