"""Rewriting a flatbuffer: tflite-micro's model editor, and re-packing with 16-byte aligned buffers."""
from __future__ import annotations

import os
import tempfile


def editor():
    """tflite-micro's model editor module (read, edit, build a flatbuffer)."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    return model_editor


def aligned(data: bytes) -> bytes:
    """``data`` re-packed by tflite-micro's aligning writer, every buffer 16-byte aligned."""
    from tflite_micro.tensorflow.lite.micro.compression.compress import tflite_flatbuffer_align_wrapper

    fd_in, path_in = tempfile.mkstemp(suffix=".tflite")
    fd_out, path_out = tempfile.mkstemp(suffix=".tflite")
    try:
        with os.fdopen(fd_in, "wb") as f:
            f.write(data)
        os.close(fd_out)
        tflite_flatbuffer_align_wrapper.align_tflite_model(path_in, path_out)
        with open(path_out, "rb") as f:
            return f.read()
    finally:
        os.unlink(path_in)
        os.unlink(path_out)


def rebuilt(model) -> bytes:
    """The editor's ``model`` written out, aligned."""
    return aligned(bytes(model.build()))
