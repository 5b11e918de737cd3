"""Export: C sources and headers for firmware, from templates in ``firmware_export/``."""
from tinyq.export.c_source import TARGETS, export

__all__ = ["TARGETS", "export"]
