"""Wav2Vec2 with a CTC head (conv feature extractor, grouped weight-normed positional conv,
transformer encoder, character vocabulary, greedy CTC decoding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import CalibrationBatch, ModelAdapter, register
from ..audio import SAMPLE_RATE


def ctc_collapse(ids: torch.Tensor, blank: int) -> list[int]:
    """Greedy CTC: merge repeated symbols, then drop blanks (in that order: a blank between two
    equal symbols keeps both, as in "LL" of HELLO)."""
    merged = torch.unique_consecutive(ids)
    return merged[merged != blank].tolist()


@register
class Wav2Vec2Adapter(ModelAdapter):
    family = "wav2vec2"
    model_types = ("wav2vec2",)
    block_patterns = (
        (r"(wav2vec2\.feature_extractor)\.", "frontend"),
        (r"(wav2vec2\.feature_projection)\.", "frontend"),
        (r"(wav2vec2\.encoder\.pos_conv_embed)\.", "frontend"),
        (r"(wav2vec2\.encoder\.layers\.\d+)\.", "encoder"),
        (r"(wav2vec2\.adapter\.layers\.\d+)\.", "encoder"),
        (r"(lm_head)$", "head"),
    )
    window_seconds = 30.0  # attention memory grows with the square of the length
    is_ctc = True
    # SpecAugment's learned mask vector: facebook/wav2vec2-base-960h and other CTC releases omit it
    unused_at_inference = (r"(^|\.)masked_spec_embed$",)

    @classmethod
    def model_class(cls):
        from transformers import Wav2Vec2ForCTC

        return Wav2Vec2ForCTC

    @classmethod
    def load(cls, source, dtype=None):
        path = Path(source)
        weights = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
        if path.is_dir() and not any((path / w).exists() for w in weights) and list(path.glob("*.onnx")):
            from ..readers.onnx_import import load_wav2vec2_onnx

            return load_wav2vec2_onnx(path)
        return super().load(source, dtype)

    def features(self, waves):
        inputs = self.processor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
        out = {"input_values": inputs["input_values"].to(self.dtype)}
        # checkpoints with group-norm feature extractors (e.g. wav2vec2-base) must not get a mask
        if "attention_mask" in inputs and getattr(self.processor.feature_extractor, "return_attention_mask", False):
            out["attention_mask"] = inputs["attention_mask"]
        return out

    def logits(self, waves) -> torch.Tensor:
        return self.model(**self.preprocess(waves)).logits

    def output_lengths(self, waves) -> torch.Tensor:
        return self.model._get_feat_extract_output_lengths(torch.tensor([len(w) for w in waves], device=self.device))

    def decode(self, logits: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """Greedy CTC over each row, trimmed to its own length so padding frames cannot emit characters."""
        blank = self.model.config.pad_token_id
        tok = self.processor.tokenizer
        return [tok.decode(ctc_collapse(row[: int(n)], blank), skip_special_tokens=True, group_tokens=False)
                for row, n in zip(logits.argmax(-1), lengths)]

    def transcribe_batch(self, waves, language=None):
        return self.decode(self.logits(waves), self.output_lengths(waves))

    def trace_forward(self):
        self.model(**self.preprocess([np.random.default_rng(0).normal(0, 0.1, SAMPLE_RATE).astype(np.float32)]))

    def make_calibration_batch(self, waves, language):
        inputs = self.preprocess(waves)
        logits = self.model(**inputs).logits
        lengths = self.output_lengths(waves)
        mask = torch.arange(logits.shape[1], device=logits.device)[None, :] < lengths[:, None]
        # frame-wise self labels: the float model's greedy CTC path
        return CalibrationBatch(inputs, mask, logits.argmax(-1), self.decode(logits, lengths))
