"""quasr models for other runtimes: whisper.cpp's ggml file (ggml.py) and ONNX Runtime graphs
(onnx.py, run by onnx_runtime.OnnxModel)."""

from .ggml import GgmlExportError, GgmlReport, export_ggml  # noqa: F401
from .onnx import OnnxReport, export_onnx  # noqa: F401
from .onnx_layers import OnnxExportError  # noqa: F401
from .onnx_runtime import OnnxModel  # noqa: F401

__all__ = ["GgmlExportError", "GgmlReport", "export_ggml", "OnnxExportError", "OnnxReport", "export_onnx", "OnnxModel"]
