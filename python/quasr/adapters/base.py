"""The one interface the rest of quasr uses to talk to a model family.

An adapter wraps a (model, processor) pair and knows how to: load the family from a local directory
or hub id, turn waveforms into model inputs, transcribe a batch (greedy generation for
encoder-decoders, greedy CTC for CTC models), list the quantizable modules in execution order grouped
into blocks, and run calibration forward passes so hooks see realistic activations. Sensitivity,
allocation, PTQ methods and evaluation only go through this interface; a new family is one new file
that subclasses `ModelAdapter` and registers itself with `@register`.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..audio import SAMPLE_RATE, is_silent

_REGISTRY: dict[str, type["ModelAdapter"]] = {}


def register(cls: type["ModelAdapter"]) -> type["ModelAdapter"]:
    for mt in cls.model_types:
        _REGISTRY[mt] = cls
    return cls


def adapter_class(model_type: str) -> type["ModelAdapter"]:
    if model_type not in _REGISTRY:
        raise ValueError(
            f"unsupported model type {model_type!r}: quasr supports {', '.join(sorted(_REGISTRY))} "
            f"(a new family is one adapter file in quasr/adapters/)"
        )
    return _REGISTRY[model_type]


def get_adapter(model: nn.Module, processor) -> "ModelAdapter":
    return adapter_class(getattr(model.config, "model_type", None))(model, processor)


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def check_processor(model: nn.Module, processor, where: str) -> None:
    """A processor that cannot turn the model's output ids into text is an error at load, not empty
    transcripts later (a folder missing tokenizer.json loads a tokenizer with one token)."""
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"{where}: the processor has no tokenizer, so nothing can be transcribed; the folder needs "
                         f"the tokenizer files (tokenizer.json / vocab.json) its model was saved with")
    vocab = getattr(model.config, "vocab_size", None)
    if vocab and len(tokenizer) < vocab // 2:
        raise ValueError(f"{where}: the tokenizer knows {len(tokenizer)} tokens but the model outputs {vocab}: "
                         f"tokenizer.json is missing or belongs to another model; copy the model's tokenizer files "
                         f"into the folder")


def _check_loading_info(info: dict, source: str, may_be_missing: tuple[str, ...] = ()) -> None:
    info = dict(info, missing_keys=[k for k in info.get("missing_keys") or []
                                    if not any(re.search(p, k) for p in may_be_missing)])
    problems = [f"{what} {sorted(info.get(key) or [])[:4]}" for key, what in
                (("missing_keys", "missing"), ("unexpected_keys", "unexpected"), ("mismatched_keys", "wrong shape"))
                if info.get(key)]
    problems += [str(e) for e in info.get("error_msgs") or []]
    if problems:
        raise ValueError(f"{source}: the weights do not match the model's config ({'; '.join(problems)}); the folder "
                         f"is incomplete or mixes two models: re-create or re-download it")


@dataclass
class Block:
    """A unit of execution: the front-end convolutions, one encoder or decoder layer, or a head."""

    name: str  # e.g. "model.encoder.layers.3"
    kind: str  # "frontend" | "encoder" | "decoder" | "head"
    layers: list[str] = field(default_factory=list)  # quantizable module names, in execution order


def split_long(wave: np.ndarray, max_seconds: float = 30.0) -> list[np.ndarray]:
    """Cut audio longer than `max_seconds` at the quietest 100 ms within the window's last third."""
    limit = int(max_seconds * SAMPLE_RATE)
    pieces = []
    while len(wave) > limit:
        frame = SAMPLE_RATE // 10
        lo = limit - min(10 * SAMPLE_RATE, limit // 3)
        energies = [float(np.square(wave[s : s + frame]).mean()) for s in range(lo, limit - frame + 1, frame)]
        cut = lo + int(np.argmin(energies)) * frame + frame // 2
        pieces.append(wave[:cut])
        wave = wave[cut:]
    pieces.append(wave)
    return pieces


def voiced_seconds(wave: np.ndarray) -> float:
    """Seconds of 100 ms frames within 26 dB of the clip's loud frames (its 95th-percentile RMS) and
    above -50 dBFS."""
    frame = SAMPLE_RATE // 10
    n = len(wave) // frame
    if n == 0:
        return 0.0
    rms = np.sqrt(np.square(wave[: n * frame].reshape(n, frame), dtype=np.float64).mean(1))
    return float((rms >= max(0.05 * np.percentile(rms, 95), 10 ** (-50 / 20))).sum()) / 10


# Read speech runs at 2-3 words per second of voice: a window well below that lost words, one far
# above it repeats itself (a looping low-bit decoder), and a clip's typical rate is capped at what
# speech holds so that looping windows do not make the honest ones look short.
MIN_WORDS_PER_VOICED_SECOND = 0.3
MAX_WORDS_PER_VOICED_SECOND = 6.0
PLAUSIBLE_WORDS_PER_VOICED_SECOND = 4.0
MIN_SHARE_OF_CLIP_RATE = 0.5
MIN_VOICED_SECONDS = 5.0


def warn_short_windows(clip: int, windows: list[np.ndarray], texts: list[str]) -> list[int]:
    """Warn about each window whose transcript stops far short of its speech (far fewer words per
    voiced second than the clip's other windows, or than any speech has) or runs far past it (more
    words than speech holds). Returns their indices. A model that ends its text early, skips a
    stretch or loops (as low-bit models do on long audio) then says so instead of silently
    dropping or inventing sentences."""
    stats = [(len(t.split()), voiced_seconds(w)) for w, t in zip(windows, texts)]
    rates = [n / v for n, v in stats if v >= MIN_VOICED_SECONDS]
    typical = min(float(np.median(rates)), PLAUSIBLE_WORDS_PER_VOICED_SECOND) if len(rates) >= 2 else None
    flagged, start = [], 0.0
    for j, ((n, v), w) in enumerate(zip(stats, windows)):
        end = start + len(w) / SAMPLE_RATE
        what = f"clip {clip}: the transcript of {start:.0f}-{end:.0f} s has {n} words for {v:.0f} s of speech"
        start = end
        if v < MIN_VOICED_SECONDS:
            continue
        rate = n / v
        if rate < MIN_WORDS_PER_VOICED_SECOND or typical is not None and rate < MIN_SHARE_OF_CLIP_RATE * typical:
            other = f" (the clip's windows have {typical:.1f})" if typical is not None else ""
            warnings.warn(f"{what}, {rate:.2f} words/s{other}: the model may have stopped early or skipped speech",
                          stacklevel=3)
        elif rate > MAX_WORDS_PER_VOICED_SECOND:
            warnings.warn(f"{what}, {rate:.1f} words/s, more than speech holds: the model may be repeating itself",
                          stacklevel=3)
        else:
            continue
        flagged.append(j)
    return flagged


class ModelAdapter:
    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    # regexes over module names -> block kind; the first group of the match names the block.
    # Quantizable modules matching none of them are a contract violation (see `blocks`).
    block_patterns: ClassVar[tuple[tuple[str, str], ...]]
    window_seconds: ClassVar[float] = 30.0  # longer audio is split at pauses before transcription
    is_ctc: ClassVar[bool] = False
    # regexes of parameters only training uses, which released checkpoints may leave out
    unused_at_inference: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, processor):
        self.model, self.processor = model, processor

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def model_class(cls):
        raise NotImplementedError

    @classmethod
    def load(cls, source: str, dtype=None):
        """(model, processor) from a local Hugging Face directory or a hub id."""
        from transformers import AutoProcessor

        from ..integrity import check_finite_model

        # safetensors only: a pickled pytorch_model.bin can run code when it is read
        try:
            model, info = cls.model_class().from_pretrained(source, dtype=dtype or torch.float32, use_safetensors=True,
                                                            output_loading_info=True)
        except (OSError, EnvironmentError) as exc:
            raise OSError(f"{source}: no safetensors weights could be read ({str(exc).splitlines()[0]}); quasr "
                          f"does not unpickle pytorch_model.bin: convert it with safetensors first") from None
        except RuntimeError as exc:  # e.g. a config whose sizes do not match the stored tensors
            raise ValueError(f"{source}: the weights do not match the model's config: "
                             f"{str(exc).strip().splitlines()[-1]}") from None
        _check_loading_info(info, source, cls.unused_at_inference)
        check_finite_model(model, source)
        model.eval()
        processor = AutoProcessor.from_pretrained(source)
        check_processor(model, processor, source)
        return model, processor

    # -- audio -> text -----------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)

    @property
    def device(self) -> torch.device:
        return next((p.device for p in self.model.parameters()), torch.device("cpu"))

    def is_multilingual(self) -> bool:
        return False

    def check_language(self, language: str | None) -> None:
        if language and language != "en" and not self.is_multilingual():
            raise ValueError(f"this {self.family} model is English-only; it cannot transcribe language {language!r}")

    def features(self, waves: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Model inputs (on the CPU) for a batch of 16 kHz mono float32 waveforms: each family's part."""
        raise NotImplementedError

    def preprocess(self, waves: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Model inputs for a batch of waveforms, on the model's device."""
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in self.features(waves).items()}

    def transcribe_batch(self, waves: list[np.ndarray], language: str | None = None) -> list[str]:
        """Greedy transcripts of one batch (no chunking, no silence handling)."""
        raise NotImplementedError

    def transcribe(self, waves: list[np.ndarray], language: str | None = None, batch_size: int = 8,
                   progress: bool = False) -> list[str]:
        """Greedy transcripts of any number of waveforms: long audio is split at pauses, silent clips
        give "" (with a warning), similar lengths are batched together."""
        self.check_language(language)
        pieces: list[tuple[int, np.ndarray]] = []
        for i, w in enumerate(waves):
            if is_silent(w):
                warnings.warn(f"clip {i} is silent (peak < -80 dBFS): its transcript is empty", stacklevel=2)
                continue
            pieces.extend((i, p) for p in split_long(w, self.window_seconds))
        order = sorted(range(len(pieces)), key=lambda j: len(pieces[j][1]))
        batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        results: dict[int, str] = {}
        for batch in tqdm(batches, desc="transcribing", disable=not progress, leave=False):
            with torch.inference_mode():
                texts = self.transcribe_batch([pieces[j][1] for j in batch], language)
            results.update((j, t.strip()) for j, t in zip(batch, texts))
        out: list[list[str]] = [[] for _ in waves]
        for j, (i, _) in enumerate(pieces):
            out[i].append(results[j])
        for i, texts in enumerate(out):
            warn_short_windows(i, [p for k, p in pieces if k == i], texts)
        return [" ".join(t).strip() for t in out]

    # -- structure ---------------------------------------------------------------------------
    def quantizable_modules(self) -> dict[str, nn.Module]:
        """nn.Linear / nn.Conv1d modules (float ones; packed ones are already quantized)."""
        return {n: m for n, m in self.model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d))}

    def trace_forward(self) -> None:
        """One cheap forward pass that runs every layer (used to record execution order)."""
        raise NotImplementedError

    def execution_order(self) -> list[str]:
        """Names of the quantizable layers in the order a forward pass first runs them (traced once
        with hooks on a short synthetic input; layers that never run keep module order, at the end)."""
        from ..nn import QuantConv1d, QuantLinear

        names = [n for n, m in self.model.named_modules()
                 if isinstance(m, (nn.Linear, nn.Conv1d, QuantLinear, QuantConv1d))]
        if getattr(self, "_order_for", None) != names:
            seen: list[str] = []
            hooks = [self.model.get_submodule(n).register_forward_hook(
                lambda mod, args, out, n=n: seen.append(n) if n not in seen else None) for n in names]
            try:
                with torch.inference_mode():
                    self.trace_forward()
            finally:
                for h in hooks:
                    h.remove()
            self._order, self._order_for = seen + [n for n in names if n not in seen], names
        return list(self._order)

    def blocks(self) -> list[Block]:
        """Quantizable modules grouped into blocks, blocks and layers in execution order. Every
        quantizable module is in exactly one block; one that matches no pattern raises (the adapter
        needs updating)."""
        blocks: dict[str, Block] = {}
        for name in self.execution_order():
            for pattern, kind in self.block_patterns:
                m = re.match(pattern, name)
                if m:
                    blocks.setdefault(m.group(1), Block(m.group(1), kind)).layers.append(name)
                    break
            else:
                raise ValueError(f"{self.family} adapter: layer {name!r} belongs to no block; update block_patterns")
        return list(blocks.values())

    def layer_order(self) -> list[str]:
        return [n for b in self.blocks() for n in b.layers]

    # -- calibration -------------------------------------------------------------------------
    def calibration_batches(self, waves: list[np.ndarray], batch_size: int = 8, language: str | None = None,
                            progress: bool = False) -> list["CalibrationBatch"]:
        """Fixed model inputs for calibration audio (silent clips dropped, long ones split):
        encoder-decoders transcribe greedily first and are then fed their own tokens (teacher forcing
        without labels), so every later pass over a batch sees the same whole sequences."""
        self.check_language(language)
        waves = [p for w in waves if not is_silent(w) for p in split_long(w, self.window_seconds)]
        if not waves:
            raise ValueError("no usable calibration audio (every clip is silent)")
        chunks = [waves[s : s + batch_size] for s in range(0, len(waves), batch_size)]
        with torch.no_grad():  # not inference_mode: Fisher sensitivity backpropagates through these inputs
            return [self.make_calibration_batch(c, language)
                    for c in tqdm(chunks, desc="calibration inputs", disable=not progress, leave=False)]

    def make_calibration_batch(self, waves: list[np.ndarray], language: str | None) -> "CalibrationBatch":
        raise NotImplementedError

    def forward_logits(self, batch: "CalibrationBatch") -> torch.Tensor:
        """[B, T, V] output logits of one calibration batch (grad-enabled unless the caller disables it)."""
        return self.model(**batch.inputs).logits

    def self_supervised_loss(self, batch: "CalibrationBatch", logits: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the logits against the model's own float predictions: the label-free
        loss behind Fisher sensitivity (its gradients are the empirical Fisher's)."""
        import torch.nn.functional as F

        return F.cross_entropy(logits[batch.mask].float(), batch.targets[batch.mask])

    def calibrate(self, waves: list[np.ndarray], batch_size: int = 8, language: str | None = None,
                  progress: bool = False, on_batch: Callable[[int], None] | None = None) -> list[str]:
        """Forward passes over calibration audio, for hooks to observe (see `calibration_batches`;
        for encoder-decoders the hooks also see the greedy generation). Returns the transcripts."""
        batches = self.calibration_batches(waves, batch_size, language, progress)
        for i, batch in enumerate(batches):
            with torch.inference_mode():
                self.forward_logits(batch)
            if on_batch:
                on_batch(i)
        return [t for b in batches for t in b.texts]


@dataclass
class CalibrationBatch:
    inputs: dict  # model keyword arguments
    mask: torch.Tensor  # [B, T] bool: output positions that count (real frames / tokens with a successor)
    targets: torch.Tensor  # [B, T] long: the float model's own prediction at each output position
    texts: list[str]


class Seq2SeqAdapter(ModelAdapter):
    """Shared logic of encoder-decoder families (Whisper, Moonshine)."""

    # transformers' layout for both: model.encoder.{conv*, layers.N}, model.decoder.layers.N, proj_out
    block_patterns = (
        (r"(model\.encoder)\.conv\d+$", "frontend"),
        (r"(model\.encoder\.layers\.\d+)\.", "encoder"),
        (r"(model\.decoder\.layers\.\d+)\.", "decoder"),
        (r"(proj_out)$", "head"),
    )

    tokens_per_second: ClassVar[float]
    token_margin: ClassVar[int] = 16
    max_tokens: ClassVar[int] = 440

    def max_new_tokens(self, waves: list[np.ndarray]) -> int:
        # a looping low-bit model stops here instead of running to the position limit (its WER still
        # counts the garbage it produced up to the cap)
        longest = max(len(w) for w in waves) / SAMPLE_RATE
        return min(int(longest * self.tokens_per_second) + self.token_margin, self.max_tokens)

    def generate_kwargs(self, language: str | None) -> dict:
        return {}

    def generate(self, waves: list[np.ndarray], language: str | None = None) -> torch.Tensor:
        inputs = self.preprocess(waves)
        return self.model.generate(**inputs, max_new_tokens=self.max_new_tokens(waves), **self.generate_kwargs(language))

    def transcribe_batch(self, waves, language=None):
        return self.processor.batch_decode(self.generate(waves, language), skip_special_tokens=True)

    def trace_forward(self):
        wave = np.zeros(SAMPLE_RATE, np.float32)
        wave[::97] = 0.1  # not silent
        start = self.model.generation_config.decoder_start_token_id
        self.model(**self.preprocess([wave]), decoder_input_ids=torch.tensor([[start, start]], device=self.device))

    def make_calibration_batch(self, waves, language):
        ids = self.generate(waves, language)
        inputs = self.preprocess(waves)
        gc = self.model.generation_config
        if gc.eos_token_id is not None:  # every token up to and including the first end token counts
            ends = torch.isin(ids, torch.tensor(gc.eos_token_id, device=ids.device).reshape(-1))
            ends[:, 0] = False  # the start token may equal the end token
            valid = (ends.long().cumsum(1) - ends.long()) == 0
        else:
            valid = (ids != gc.pad_token_id) if gc.pad_token_id is not None else torch.ones_like(ids, dtype=torch.bool)
            valid[:, 0] = True
        inputs.update(decoder_input_ids=ids, decoder_attention_mask=valid.long())
        # position t predicts token t+1 of the model's own transcript
        targets = torch.cat([ids[:, 1:], torch.zeros_like(ids[:, :1])], 1)
        mask = torch.cat([valid[:, 1:], torch.zeros_like(valid[:, :1])], 1)
        return CalibrationBatch(inputs, mask, targets, self.processor.batch_decode(ids, skip_special_tokens=True))
