"""tinyq: low-bit (2/4/8-bit) quantization-aware training and deployment to microcontrollers."""
__version__ = "0.1.0"
