"""Where quasr models run outside quasr's own API: transformers' from_pretrained and pipeline
(transformers_quantizer, registered on import)."""

from .transformers_quantizer import QuasrConfig, QuasrHfQuantizer  # noqa: F401  (registers "quasr")
