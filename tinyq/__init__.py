"""tinyq: low-bit (2/4/8-bit) quantization-aware training and deployment to microcontrollers.

The public API is :mod:`tinyq.api`; its names are reachable here too (``tinyq.train``,
``tinyq.check``, ...), imported on first use so that ``import tinyq`` does not load TensorFlow.
"""
import importlib
import importlib.util

from tinyq.version import __version__

__all__ = ["__version__"]


def __getattr__(name: str):
    # a submodule (or a private name) is not the API's: the import system loads submodules itself
    if name.startswith("_") or importlib.util.find_spec(f"tinyq.{name}") is not None:
        raise AttributeError(f"module 'tinyq' has no attribute {name!r}")
    api = importlib.import_module("tinyq.api")
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'tinyq' has no attribute {name!r}")
