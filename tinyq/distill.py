"""Knowledge distillation from the float model into its quantized copy.

Loss per sample: ``a * KL(p_teacher || p_student) + (1 - a) * CE(y, p_student)`` on the
models' softmax outputs (Hinton et al. 2015, arXiv 1503.02531, at temperature 1). With
``a = 1`` labels are not used, so any images serve; the teacher runs in inference mode.
"""
from __future__ import annotations

from tinyq._tf import keras, tf


class Distiller(keras.Model):
    """Trains ``student`` toward ``teacher`` (frozen) and the labels; evaluates the student."""

    def __init__(self, student: keras.Model, teacher: keras.Model, alpha: float) -> None:
        super().__init__()
        self.student, self.teacher, self.alpha = student, teacher, float(alpha)
        self.teacher.trainable = False
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy]

    def call(self, x, training=False):
        return self.student(x, training=training)

    def _loss(self, x, y, training: bool):
        p_teacher = self.teacher(x, training=False)
        p_student = self.student(x, training=training)
        loss = self.alpha * keras.losses.kl_divergence(p_teacher, p_student)
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
        variables = self.student.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(total, variables), variables))
        return self._record(loss, y, p_student)

    def test_step(self, data):
        x, y = data
        loss, p_student = self._loss(x, y, training=False)
        return self._record(loss, y, p_student)
