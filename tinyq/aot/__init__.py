"""Ahead-of-time C for one model: no TFLM, no flatbuffer, no heap (``tinyq export --target aot``).

:mod:`.lower` reads a tinyq file into a list of integer steps (weights decoded, requantization
as TFLite's ``(multiplier, shift)`` pairs, one static buffer planned by tensor lifetimes);
:mod:`.reference` runs those steps in numpy; :mod:`.codegen` writes them as C99.
"""
