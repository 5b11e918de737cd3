"""``tinyq device``: a model's firmware built against a TFLM tree, run on an emulated Cortex-M.

:mod:`.boards` (the QEMU boards), :mod:`.toolchain` (the tools, named by their Debian packages),
:mod:`.tflm` (a user's TFLM tree, built once per board and kernel set), :mod:`.firmware` (the
model, tinyq's runner and board support, linked; flash from the link map), :mod:`.qemu` (runs it).
:func:`tinyq.pipeline.device.run_on_device` wires them.
"""
