"""quasr: low-bit post-training quantization for edge speech recognition, with native kernels."""

__version__ = "0.1.0"

from .format import PackedWeight, dequantize, pack_codes, unpack_codes  # noqa: E402
from .adapters import get_adapter  # noqa: E402
from .models import load_adapter, load_model  # noqa: E402
from .nn import QuantConv1d, QuantLinear, QuantTiedEmbedding  # noqa: E402
from .plan import current_plan, model_size_bytes, swap, uniform_plan  # noqa: E402
from .quantize import rtn_quantize  # noqa: E402
from .serialize import load_quantized, save_quantized  # noqa: E402
from .integrations import QuasrConfig  # noqa: E402  (registers quasr with transformers' from_pretrained)

__all__ = [
    "PackedWeight", "QuasrConfig", "QuantConv1d", "QuantLinear", "QuantTiedEmbedding", "current_plan", "dequantize", "get_adapter", "load_adapter", "load_model",
    "load_quantized", "model_size_bytes", "pack_codes", "rtn_quantize", "save_quantized", "swap", "uniform_plan",
    "unpack_codes",
]
