"""Export: firmware sources and projects (c, arduino, cmake, zephyr) from templates in ``firmware_export/``."""
from tinyq.export.exporter import ExportResult, export
from tinyq.export.targets import TARGETS

__all__ = ["TARGETS", "ExportResult", "export"]
