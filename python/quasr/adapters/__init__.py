"""Model-family adapters: the seam between quasr and each model family.

Every module in this package is imported here, so a new family is one new file whose adapter class
is decorated with `@register`."""

import importlib
import pkgutil

from .base import Block, ModelAdapter, Seq2SeqAdapter, adapter_class, get_adapter, register, split_long, supported_model_types

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Block", "ModelAdapter", "Seq2SeqAdapter", "adapter_class", "get_adapter", "register", "split_long",
           "supported_model_types"]
