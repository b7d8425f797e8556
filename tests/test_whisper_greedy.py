"""The lean Whisper greedy loop gives transformers' generate tokens: English-only and multilingual
(language given by code or name, or detected per clip), batch 1 and several, float and packed."""

import copy

import numpy as np
import pytest
import torch

from conftest import tiny_family
from quasr.adapters import get_adapter
from quasr.adapters import whisper_greedy
from quasr.plan import swap, uniform_plan


def _waves(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.1, int(16000 * (0.6 + 0.4 * i))).astype(np.float32) for i in range(n)]


def _multilingual(model):
    """The tiny model's generation config made multilingual the way real checkpoints are."""
    gc = model.generation_config
    gc.is_multilingual = True
    gc.lang_to_id = {"<|en|>": 250, "<|fr|>": 251, "<|de|>": 252}
    gc.task_to_id = {"transcribe": 260, "translate": 261}
    gc.no_timestamps_token_id = 270
    gc.forced_decoder_ids = [[1, None], [2, 260], [3, 270]]
    return model


def _strip(ids: torch.Tensor, prompt_len: int, gc) -> list[list[int]]:
    """Lean output as Whisper's generate returns it: prompt, end token and padding removed."""
    out = []
    for row in ids[:, prompt_len:].tolist():
        if gc.eos_token_id in row:
            row = row[: row.index(gc.eos_token_id)]
        out.append(row)
    return out


def _hf(adapter, waves, language):
    adapter.lean_decoding = False
    try:
        ids = adapter.generate(waves, language)
    finally:
        adapter.lean_decoding = True
    pad = adapter.model.generation_config.pad_token_id
    return [[t for t in row if t != pad] for row in ids.tolist()]


def _lean(adapter, waves, language):
    ids = adapter.generate(waves, language)
    states = adapter.model.get_encoder()(adapter.preprocess(waves)["input_features"]).last_hidden_state
    multilingual = bool(language) and adapter.is_multilingual()
    prompt = whisper_greedy.prompt_ids(adapter.model, states, language if multilingual else None,
                                       "transcribe" if multilingual else None)
    assert torch.equal(ids[:, : prompt.shape[1]], prompt)
    return _strip(ids, prompt.shape[1], adapter.model.generation_config)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_lean_loop_matches_generate_english_only(packed, batch):
    model, processor = tiny_family("whisper")
    if packed:
        model = swap(model, uniform_plan(model, 4, 32), progress=False)
    adapter = get_adapter(model, processor)
    assert whisper_greedy.supports(model) is None
    waves = _waves(batch)
    with torch.inference_mode():
        assert _lean(adapter, waves, None) == _hf(adapter, waves, None)
        assert adapter.transcribe(waves, batch_size=batch) == [processor.batch_decode(
            [ids], skip_special_tokens=True)[0].strip() for ids in _hf(adapter, waves, None)]


@pytest.mark.parametrize("packed", [False, True])
def test_cpu_encoder_runs_clip_by_clip_with_the_batched_result(packed, monkeypatch):
    model, processor = tiny_family("whisper")
    if packed:
        model = swap(model, uniform_plan(model, 4, 32), progress=False)
    adapter = get_adapter(model, processor)
    feats = adapter.preprocess(_waves(3))["input_features"]
    calls = []
    encoder = model.get_encoder()
    monkeypatch.setattr(encoder, "forward", lambda x, _f=encoder.forward: calls.append(len(x)) or _f(x))
    with torch.inference_mode():
        chunked = adapter.encode(feats)
        assert calls == [1, 1, 1]
        whole = encoder(feats).last_hidden_state
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("language", ["fr", "french", None])
def test_lean_loop_matches_generate_multilingual(language):
    model, processor = tiny_family("whisper")
    adapter = get_adapter(_multilingual(model), processor)
    assert adapter.is_multilingual()
    waves = _waves(3, seed=1)
    with torch.inference_mode():
        lean, hf = _lean(adapter, waves, language), _hf(adapter, waves, language)
        assert lean == hf
        states = model.get_encoder()(adapter.preprocess(waves)["input_features"]).last_hidden_state
        prompt = whisper_greedy.prompt_ids(model, states, language, "transcribe" if language else None)
    assert prompt.shape == (3, 4) and (prompt[:, 2] == 260).all() and (prompt[:, 3] == 270).all()
    if language:
        assert (prompt[:, 1] == 251).all()
    else:  # detected per clip, as generate does
        assert torch.equal(prompt[:, 1], model.detect_language(input_features=adapter.preprocess(waves)["input_features"]))


def test_lean_loop_refuses_unknown_language_and_defers_beam_search():
    model, processor = tiny_family("whisper")
    _multilingual(model)
    with pytest.raises(ValueError, match="not one this Whisper model knows"):
        whisper_greedy.language_id(model.generation_config, "es")
    beam = copy.deepcopy(model)
    beam.generation_config.num_beams = 2
    assert "beam" in whisper_greedy.supports(beam)


def test_calibration_batch_feeds_the_prompt_and_counts_the_end_token():
    """Teacher forcing sees what free-running decoding saw: the decoder prompt first, and the
    prediction of the end token is one of the scored positions."""
    model, processor = tiny_family("whisper")
    adapter = get_adapter(model, processor)
    gc = model.generation_config
    (batch,) = adapter.calibration_batches(_waves(2), batch_size=2)
    ids = batch.inputs["decoder_input_ids"]
    assert (ids[:, 0] == gc.decoder_start_token_id).all()
    for row, mask, target in zip(ids.tolist(), batch.mask, batch.targets):
        n = row.index(gc.eos_token_id, 1) if gc.eos_token_id in row[1:] else len(row) - 1
        assert mask[:n].all() and not mask[n:].any()  # positions 0..n-1 predict tokens 1..n (n: the end token)
        assert target[n - 1] == row[n]


def test_lean_loop_stops_at_the_end_token_as_generate_does():
    """A bias on the end token's logit makes the random model stop early; both loops stop at the same
    step (the random encoder gives near-identical rows, so real clips test ragged ends below)."""
    model, processor = tiny_family("whisper")
    head = torch.nn.Linear(model.config.d_model, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.proj_out.weight)
        head.bias.zero_()
        head.bias[model.generation_config.eos_token_id] = 0.6
    model.proj_out = head
    adapter = get_adapter(model, processor)
    waves = [(np.sin(np.arange(16000) * f) * 0.3).astype(np.float32) for f in (0.01, 0.05, 0.2)]
    with torch.inference_mode():
        lean = _lean(adapter, waves, None)
        assert lean == _hf(adapter, waves, None)
    assert all(0 < len(r) < adapter.max_new_tokens(waves) for r in lean)


@pytest.mark.parametrize("packed,eos_bias", [(False, 0.6), (False, 0.8), (False, 0.9), (True, 0.1), (True, 0.2),
                                             (True, 0.3)])
def test_rows_that_end_leave_the_batch_with_the_same_tokens(packed, eos_bias):
    """Rows with different prompts and a bias on the end token end at different steps: the batch
    (which drops each row as it ends) gives every row the tokens it gets decoded alone."""
    model, _ = tiny_family("whisper")
    if packed:
        model = swap(model, uniform_plan(model, 4, 32), progress=False)
    gc = model.generation_config
    head = torch.nn.Linear(model.config.d_model, model.config.vocab_size, bias=True)
    torch.manual_seed(1)
    with torch.no_grad():  # the packed model's head is float again here: a random one
        head.weight.copy_(model.proj_out.weight if not packed else torch.randn_like(head.weight) * 0.02)
        head.bias.zero_()
        head.bias[gc.eos_token_id] = eos_bias
    model.proj_out = head
    torch.manual_seed(0)
    states = torch.randn(6, model.config.max_source_positions, model.config.d_model)
    prompt = torch.tensor([[gc.decoder_start_token_id, t] for t in (5, 40, 77, 120, 160, 200)])
    greedy = whisper_greedy.WhisperGreedy(model)
    seen = []
    with torch.inference_mode():
        batched = greedy(states, prompt, 20, lambda ids, scores: seen.append(ids.shape[0]) or scores)
        alone = [greedy(states[r: r + 1], prompt[r: r + 1], 20)[0].tolist() for r in range(6)]
    pad = gc.pad_token_id if gc.pad_token_id is not None else gc.eos_token_id
    for row, own in zip(batched.tolist(), alone):
        assert row == own + [pad] * (len(row) - len(own))
    ends = {(r.index(gc.eos_token_id) if gc.eos_token_id in r else -1) for r in alone}
    assert len(ends) > 1 and seen[0] == 6 and min(seen) < 6  # rows ended raggedly and left the batch


@pytest.mark.slow
def test_lean_loop_matches_generate_on_real_clips(whisper_tiny_en, speech_dir):
    """whisper-tiny.en, float and the --bits 4 preset's packed model, 6 real prompts in one batch of
    ragged lengths and one by one: the same transcripts as transformers' generate."""
    from quasr.data import load_clips
    from quasr.methods import get_method, quantize, with_activations

    model, processor = whisper_tiny_en
    packed = copy.deepcopy(model)
    plan = with_activations(uniform_plan(packed, 4, 128), 8, "group", True)
    quantize(get_adapter(packed, processor), plan, None, get_method("rtn"), progress=False)
    waves = [c.waveform() for c in load_clips(speech_dir / "prompts" / "manifest.jsonl", language="en", limit=6)]
    for m in (model, packed):
        adapter = get_adapter(m, processor)
        with torch.inference_mode():
            assert _lean(adapter, waves, "en") == _hf(adapter, waves, "en")
            lean = adapter.transcribe(waves, "en", batch_size=1)
            adapter.lean_decoding = False
            assert adapter.transcribe(waves, "en", batch_size=1) == lean
            adapter.lean_decoding = True
