"""Model-family adapters: the seam between quasr and each model family."""

from .base import Block, ModelAdapter, adapter_class, get_adapter, register, split_long, supported_model_types
from . import moonshine, wav2vec2, whisper  # noqa: F401  (registers the families)

__all__ = ["Block", "ModelAdapter", "adapter_class", "get_adapter", "register", "split_long", "supported_model_types"]
