"""`tinyq check`'s account of where Keras and the file disagree."""
import numpy as np

from tinyq.check import against_keras


def test_against_keras_counts_the_flips_and_how_close_keras_was_to_a_tie():
    keras_prob = np.array([[0.6, 0.4], [0.51, 0.49], [0.2, 0.8]])
    result = against_keras(keras_prob, np.array([0, 1, 1]))  # the second flips, where Keras had 0.51 : 0.49
    assert result["disagreements"] == 1 and abs(result["keras_margin_max"] - 0.02) < 1e-9
    three = np.array([[0.3, 0.45, 0.25], [0.1, 0.2, 0.7]])
    result = against_keras(three, np.array([0, 2]))  # the first flips; Keras's top two there: 0.45, 0.3
    assert result["disagreements"] == 1 and abs(result["keras_margin_max"] - 0.15) < 1e-9
    assert against_keras(three, np.array([1, 2])) == {"agreement_with_keras": 1.0, "disagreements": 0,
                                                       "keras_margin_max": 0.0}
