"""Quantisation formats on the CPU: exact numpy dequantisers and fixture quantisers."""
from .dequant import dequantize, dequantize_blocks  # noqa: F401
from .quantize import quantize  # noqa: F401
