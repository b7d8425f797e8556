"""quasr models for other runtimes: whisper.cpp's ggml file (ggml.py)."""

from .ggml import GgmlExportError, GgmlReport, export_ggml  # noqa: F401

__all__ = ["GgmlExportError", "GgmlReport", "export_ggml"]
