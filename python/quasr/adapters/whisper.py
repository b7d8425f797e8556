"""Whisper (encoder-decoder over log-mel features; English-only and multilingual checkpoints)."""

from __future__ import annotations

from .base import Seq2SeqAdapter, register
from ..audio import SAMPLE_RATE


@register
class WhisperAdapter(Seq2SeqAdapter):
    family = "whisper"
    model_types = ("whisper",)
    window_seconds = 30.0  # the encoder's fixed window
    tokens_per_second = 8  # fast read speech is ~3-4 words/s

    @classmethod
    def model_class(cls):
        from transformers import WhisperForConditionalGeneration

        return WhisperForConditionalGeneration

    def is_multilingual(self) -> bool:
        return bool(getattr(self.model.generation_config, "is_multilingual", False))

    def features(self, waves):
        feats = self.processor.feature_extractor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        return {"input_features": feats.to(self.dtype)}

    def generate_kwargs(self, language):
        return {"language": language, "task": "transcribe"} if language and self.is_multilingual() else {}
