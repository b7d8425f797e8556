"""Whisper (encoder-decoder over log-mel features; English-only and multilingual checkpoints)."""

from __future__ import annotations

import os

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from . import whisper_greedy
from .base import Seq2SeqAdapter, register
from ..audio import SAMPLE_RATE


class CachedSuppressTokens(LogitsProcessor):
    """transformers' SuppressTokensLogitsProcessor and SuppressTokensAtBeginLogitsProcessor (scores of
    `always` set to -inf at every step, of `at_begin` at the first generated step) with their masks
    built once per generate call: transformers' run torch.isin over the whole vocabulary at every
    step, two sorts of 51864 entries that cost more than whisper-tiny's decoder matmuls at batch 1.
    The first call is the first generated step (the decoder prompt's length is Whisper's begin_index)."""

    def __init__(self, always, at_begin):
        self.always, self.at_begin = list(always or ()), list(at_begin or ())
        self.masks, self.begin_length = None, None

    def _mask(self, ids, vocab, device):
        mask = torch.zeros(vocab, dtype=torch.bool, device=device)
        valid = [i for i in ids if 0 <= i < vocab]  # ids outside the vocabulary match nothing (as torch.isin)
        mask[valid] = True
        return mask

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        vocab = scores.shape[-1]
        if self.masks is None or self.masks[0].shape[0] != vocab or self.masks[0].device != scores.device:
            always = self._mask(self.always, vocab, scores.device)
            self.masks = (always, always | self._mask(self.at_begin, vocab, scores.device))
        if self.begin_length is None:
            self.begin_length = input_ids.shape[-1]
        return scores.masked_fill(self.masks[1] if input_ids.shape[-1] == self.begin_length else self.masks[0],
                                  -float("inf"))


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

    # greedy decoding through whisper_greedy (the same tokens as transformers' generate, less
    # overhead per token); False, or QUASR_LEAN_DECODE=0, decodes with transformers' generate
    lean_decoding = os.environ.get("QUASR_LEAN_DECODE", "1") != "0"

    def _suppressor(self):
        gc = self.model.generation_config
        if getattr(gc, "suppress_tokens", None) or getattr(gc, "begin_suppress_tokens", None):
            return CachedSuppressTokens(gc.suppress_tokens, gc.begin_suppress_tokens)
        return None

    def generate_kwargs(self, language):
        kwargs = {"language": language, "task": "transcribe"} if language and self.is_multilingual() else {}
        suppress = self._suppressor()
        if suppress is not None:
            kwargs.update(suppress_tokens=None, begin_suppress_tokens=None, logits_processor=LogitsProcessorList([suppress]))
        return kwargs

    # On a CPU the encoder runs one clip at a time: a batch of Whisper's 1500-frame windows makes
    # activations too large for the caches (8 clips of whisper-tiny.en W4: 1.4-1.7 s batched against
    # 0.9 s one by one, bench/RESULTS.md), and every op of the encoder works clip by clip, so it is the same computation.
    cpu_encoder_chunk = 1

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """The encoder's last hidden states of a batch of log-mel features."""
        encoder = self.model.get_encoder()
        chunk = self.cpu_encoder_chunk if features.device.type == "cpu" else features.shape[0]
        if features.shape[0] <= chunk:
            return encoder(features).last_hidden_state
        return torch.cat([encoder(features[i: i + chunk]).last_hidden_state
                          for i in range(0, features.shape[0], chunk)])

    def generate(self, waves, language=None):
        """Greedy token ids. The lean loop returns the decoder prompt, the transcript and the end token
        (then padding); transformers' generate, used where the lean loop does not apply, returns the
        transcript tokens only."""
        if not self.lean_decoding or whisper_greedy.supports(self.model) is not None:
            return super().generate(waves, language)
        inputs = self.preprocess(waves)
        with torch.no_grad():
            states = self.encode(inputs["input_features"])
            multilingual = bool(language) and self.is_multilingual()
            prompt = whisper_greedy.prompt_ids(self.model, states, language if multilingual else None,
                                               "transcribe" if multilingual else None)
            return whisper_greedy.WhisperGreedy(self.model)(states, prompt, self.max_new_tokens(waves), self._suppressor())
