"""C/C++ templates the exporter fills in (installed as tinyq.firmware_export)."""
