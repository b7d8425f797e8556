"""Moonshine (encoder-decoder over the raw waveform: strided conv front-end, rotary attention)."""

from __future__ import annotations

from .base import Seq2SeqAdapter, register
from ..audio import SAMPLE_RATE


@register
class MoonshineAdapter(Seq2SeqAdapter):
    family = "moonshine"
    model_types = ("moonshine",)
    # trained on segments up to ~30 s; its compute grows with length, so long audio is split too
    window_seconds = 30.0
    tokens_per_second = 6.5  # Moonshine's own cap
    token_margin = 10

    @classmethod
    def model_class(cls):
        from transformers import MoonshineForConditionalGeneration

        return MoonshineForConditionalGeneration

    def features(self, waves):
        inputs = self.processor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
        out = {"input_values": inputs["input_values"].to(self.dtype)}
        if "attention_mask" in inputs:
            out["attention_mask"] = inputs["attention_mask"]
        return out
