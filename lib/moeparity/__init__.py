"""moeparity: numerical parity of quantized MoE FFNs between a CPU reference and a GPU implementation."""
__version__ = "0.1.0"

from .errors import MoeParityError, UnsupportedQType  # noqa: F401
from .gguf_model import Model  # noqa: F401
