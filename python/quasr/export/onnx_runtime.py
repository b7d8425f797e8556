"""Transcribe with a `quasr export --format onnx` folder in onnxruntime: `OnnxModel(folder).transcribe(waves)`.

The model's own quasr adapter does everything around the graphs (features, splitting long audio at
pauses, batching by length, the Whisper prompt and token suppression, CTC decoding), so an export
transcribes a clip as the quasr model it came from; only the forward passes run in onnxruntime.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..adapters.whisper import WhisperAdapter
from .onnx import FORMAT, FORMAT_VERSION, MANIFEST


def _sessions(folder: Path, graphs: dict, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return {k: ort.InferenceSession(str(folder / g["file"]), options, providers=["CPUExecutionProvider"])
            for k, g in graphs.items()}


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    try:
        info = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise ValueError(f"{folder} has no {MANIFEST}: it is not a `quasr export --format onnx` folder") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{folder}/{MANIFEST} is corrupt ({exc}); export the model again") from None
    if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder}/{MANIFEST}: format {info.get('format')!r} version {info.get('format_version')!r}, "
                         f"this quasr reads {FORMAT!r} version {FORMAT_VERSION}; export the model again")
    missing = [g["file"] for g in info["graphs"].values() if not (folder / g["file"]).exists()]
    if missing:
        raise ValueError(f"{folder}: {', '.join(missing)} missing; copy the whole export folder")
    return info


def greedy(step, prompt: torch.Tensor, past: np.ndarray, total: int, eos: int, pad: int, suppress=None) -> torch.Tensor:
    """Greedy decoding over a decoder graph: `step(ids, past) -> (logits, present)` fed the prompt, then
    one token at a time; (B, total) ids at most, prompt included, a finished row padded, as
    whisper_greedy and transformers' generate return them. `suppress(ids, scores)` masks logits."""
    ids, feed = prompt, prompt.numpy()
    unfinished = torch.ones(prompt.shape[0], dtype=torch.bool)
    while ids.shape[1] < total:
        logits, past = step(feed, past)
        scores = torch.from_numpy(logits)
        if suppress is not None:
            scores = suppress(ids, scores)
        nxt = torch.where(unfinished, scores.argmax(-1), pad)
        ids = torch.cat([ids, nxt[:, None]], 1)
        unfinished &= nxt != eos
        feed = nxt[:, None].numpy()
        if not bool(unfinished.any()):
            break
    return ids


class _WhisperOnnx(WhisperAdapter):
    """WhisperAdapter whose generate runs encoder.onnx and decoder.onnx (whisper_greedy's loop)."""

    def __init__(self, folder: Path, info: dict, threads: int | None):
        from transformers import AutoConfig, AutoProcessor, GenerationConfig

        config = AutoConfig.from_pretrained(folder)
        stand_in = SimpleNamespace(config=config, generation_config=GenerationConfig.from_pretrained(folder),
                                   detect_language=self._detect_language)
        super().__init__(stand_in, AutoProcessor.from_pretrained(folder))
        self.sessions = _sessions(folder, info["graphs"], threads)
        self.layers, self.heads = config.decoder_layers, config.decoder_attention_heads
        self.head_dim = config.d_model // self.heads
        self._cross = None

    dtype = torch.float32
    device = torch.device("cpu")

    def _step(self, ids: np.ndarray, past: np.ndarray):
        return self.sessions["decoder"].run(None, {"input_ids": ids, "past_kv": past, "cross_kv": self._cross})

    def _past(self, batch: int) -> np.ndarray:
        return np.zeros((self.layers, 2, batch, self.heads, 0, self.head_dim), np.float32)

    def _detect_language(self, encoder_outputs=None, generation_config=None):
        """The most likely language token after the start token, as transformers' detect_language picks it."""
        gc = self.model.generation_config
        b = self._cross.shape[2]
        logits, _ = self._step(np.full((b, 1), gc.decoder_start_token_id, np.int64), self._past(b))
        lang_ids = np.array(sorted(gc.lang_to_id.values()))
        return torch.from_numpy(lang_ids[logits[:, lang_ids].argmax(-1)])

    def generate(self, waves, language=None):
        from ..adapters import whisper_greedy

        gc = self.model.generation_config
        feats = self.features(waves)["input_features"].numpy().astype(np.float32)
        self._cross = self.sessions["encoder"].run(None, {"input_features": feats})[0]
        b = feats.shape[0]
        multilingual = bool(language) and self.is_multilingual()
        prompt = whisper_greedy.prompt_ids(self.model, torch.zeros(b, 1), language if multilingual else None,
                                           "transcribe" if multilingual else None)
        eos = gc.eos_token_id
        pad = gc.pad_token_id if gc.pad_token_id is not None else eos
        total = min(prompt.shape[1] + self.max_new_tokens(waves), self.model.config.max_target_positions)
        return greedy(self._step, prompt, self._past(b), total, eos, pad, self._suppressor())


def _moonshine(folder: Path, info: dict, threads: int | None):
    from transformers import AutoConfig, AutoProcessor, GenerationConfig

    from ..adapters.moonshine import MoonshineAdapter

    class _MoonshineOnnx(MoonshineAdapter):
        """MoonshineAdapter whose generate is greedy decoding over encoder.onnx and decoder.onnx."""

        dtype = torch.float32
        device = torch.device("cpu")

        def generate(self, waves, language=None):
            gc, cfg = self.model.generation_config, self.model.config
            inputs = self.features(waves)
            values = inputs["input_values"].numpy().astype(np.float32)
            mask = inputs.get("attention_mask")
            mask = np.ones(values.shape, np.int64) if mask is None else mask.numpy().astype(np.int64)
            cross, frames = self.sessions["encoder"].run(None, {"input_values": values, "attention_mask": mask})
            b = values.shape[0]
            past = np.zeros((cross.shape[0], 2, b, cross.shape[3], 0, cross.shape[5]), np.float32)
            eos = gc.eos_token_id
            pad = gc.pad_token_id if gc.pad_token_id is not None else eos
            ids = torch.full((b, 1), gc.decoder_start_token_id, dtype=torch.long)
            total = min(1 + self.max_new_tokens(waves), cfg.max_position_embeddings)
            feed = {"cross_kv": cross, "encoder_mask": frames}

            def step(ids_, past_):
                return self.sessions["decoder"].run(None, {"input_ids": ids_, "past_kv": past_, **feed})

            return greedy(step, ids, past, total, eos, pad)

    stand_in = SimpleNamespace(config=AutoConfig.from_pretrained(folder),
                               generation_config=GenerationConfig.from_pretrained(folder))
    adapter = _MoonshineOnnx(stand_in, AutoProcessor.from_pretrained(folder))
    adapter.sessions = _sessions(folder, info["graphs"], threads)
    return adapter


def _ctc(folder: Path, info: dict, threads: int | None):
    from transformers import AutoConfig, AutoProcessor

    from ..adapters.wav2vec2 import Wav2Vec2Adapter

    class _Wav2Vec2Onnx(Wav2Vec2Adapter):
        dtype = torch.float32
        device = torch.device("cpu")

        def logits(self, waves):
            values = self.features(waves)["input_values"].numpy().astype(np.float32)
            return torch.from_numpy(self.session.run(None, {"input_values": values})[0])

        def output_lengths(self, waves):
            lengths = torch.tensor([len(w) for w in waves])
            for k, s in zip(self.model.config.conv_kernel, self.model.config.conv_stride):
                lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
            return lengths

    config = AutoConfig.from_pretrained(folder)
    adapter = _Wav2Vec2Onnx(SimpleNamespace(config=config), AutoProcessor.from_pretrained(folder))
    adapter.session = _sessions(folder, info["graphs"], threads)["ctc"]
    return adapter


class OnnxModel:
    """An exported quasr model in onnxruntime (CPU)."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        self.folder = Path(folder)
        self.info = read_manifest(self.folder)
        family = self.info["family"]
        if family == "whisper":
            self.adapter = _WhisperOnnx(self.folder, self.info, threads)
        elif family == "moonshine":
            self.adapter = _moonshine(self.folder, self.info, threads)
        elif family == "wav2vec2":
            self.adapter = _ctc(self.folder, self.info, threads)
        else:
            raise ValueError(f"{self.folder}: family {family!r} has no onnxruntime runner in this quasr")

    def transcribe(self, waves: list[np.ndarray], language: str | None = None, batch_size: int = 8) -> list[str]:
        """Greedy transcripts of 16 kHz mono float32 waveforms."""
        return self.adapter.transcribe(waves, language, batch_size)

    def size_bytes(self) -> int:
        return sum((self.folder / g["file"]).stat().st_size for g in self.info["graphs"].values())
