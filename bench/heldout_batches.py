"""Shared setup of the per-layer held-out checks (gptq_heldout.py, omniquant_shift_layers.py):
whisper-tiny.en on one thread, calibration batches from 16 English prompts and held-out batches
from 16 others (prompts 48-79: the Edge-ASR sweep evaluates the first 48)."""
import torch

from quasr.adapters import get_adapter
from quasr.data import load_clips
from quasr.models import load_model


def tiny_heldout():
    """(model, adapter, calibration batches, held-out batches)."""
    torch.set_num_threads(1)
    model, proc = load_model("whisper-tiny.en")
    ad = get_adapter(model, proc)
    clips = load_clips("../shared/speech/prompts/manifest.jsonl", "en", 80)
    cal = ad.calibration_batches([c.waveform() for c in clips[48:64]], 8, "en")
    held = ad.calibration_batches([c.waveform() for c in clips[64:80]], 8, "en")
    return model, ad, cal, held
