"""Real Moonshine base: our .ort reader + converter against ONNX Runtime on the same files, and on
real speech (float and quantized)."""

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]


@pytest.fixture(scope="module")
def moonshine_base():
    pytest.importorskip("moonshine_cpp")
    from quasr.models import load_adapter

    return load_adapter("moonshine-base")


@pytest.fixture(scope="module")
def ort_files():
    from quasr.models import BUILTIN, _package_dir
    from quasr.readers.moonshine_ort import moonshine_files

    b = BUILTIN["moonshine-base"]
    return moonshine_files(_package_dir(b.modules[0], b.packages))


def _beckett():
    from quasr.audio import load_audio
    from quasr.models import BUILTIN, _package_dir

    b = BUILTIN["moonshine-base"]
    return load_audio(_package_dir(b.modules[0], b.packages) / "test-data" / "beckett.wav")  # byte-identical to useful-moonshine-onnx's assets/beckett.wav


def test_converter_matches_onnxruntime(moonshine_base, ort_files):
    ort = pytest.importorskip("onnxruntime")
    from transformers.models.moonshine.modeling_moonshine import MoonshineEncoderModelOutput

    enc_file, dec_file, _ = ort_files
    model = moonshine_base.model
    wave = _beckett()[: 16000 * 4]
    enc_ref = ort.InferenceSession(str(enc_file)).run(None, {"input_values": wave[None]})[0]
    with torch.inference_mode():
        enc = model.model.encoder(torch.from_numpy(wave[None])).last_hidden_state.numpy()
    assert enc.shape == enc_ref.shape
    assert np.abs(enc - enc_ref).max() < 1e-3

    dec = ort.InferenceSession(str(dec_file))
    ids = np.array([[1, 1534, 2003, 300, 42]], np.int64)
    feeds = {"input_ids": ids, "encoder_hidden_states": enc_ref, "use_cache_branch": np.array([False])}
    heads, head_dim = model.config.decoder_num_attention_heads, model.config.hidden_size // model.config.decoder_num_attention_heads
    for i in dec.get_inputs():
        if i.name.startswith("past_key_values"):
            feeds[i.name] = np.zeros((1, heads, 0, head_dim), np.float32)
    logits_ref = dec.run(["logits"], feeds)[0]
    with torch.inference_mode():
        logits = model(encoder_outputs=MoonshineEncoderModelOutput(last_hidden_state=torch.from_numpy(enc_ref)),
                       decoder_input_ids=torch.from_numpy(ids)).logits.numpy()
    assert np.abs(logits - logits_ref).max() < 1e-3


def test_transcribes_real_speech(moonshine_base, speech_dir):
    from quasr.data import load_clips
    from quasr.evaluate import word_error_rate

    assert moonshine_base.transcribe([_beckett()])[0].lower().startswith("ever tried")
    clips = load_clips(speech_dir / "prompts" / "manifest.jsonl", "en", 12)
    hyps = moonshine_base.transcribe([c.waveform() for c in clips])
    wer, _, _ = word_error_rate([c.text for c in clips], hyps)
    assert wer < 8.0, list(zip([c.text for c in clips], hyps))


def test_quantized_moonshine_on_real_speech(speech_dir):
    pytest.importorskip("moonshine_cpp")
    from quasr.data import load_clips
    from quasr.evaluate import word_error_rate
    from quasr.models import load_adapter
    from quasr.nn import QuantConv1d
    from quasr.plan import swap, uniform_plan

    clips = load_clips(speech_dir / "prompts" / "manifest.jsonl", "en", 12)
    refs = [c.text for c in clips]
    waves = [c.waveform() for c in clips]
    adapter = load_adapter("moonshine-base")
    float_wer, _, _ = word_error_rate(refs, adapter.transcribe(waves))
    swap(adapter.model, uniform_plan(adapter.model, 8, 128), progress=False)
    assert isinstance(adapter.model.model.encoder.conv1, QuantConv1d)  # the 127-tap, stride-64 conv
    wer8, _, _ = word_error_rate(refs, adapter.transcribe(waves))
    assert wer8 <= float_wer + 2.0


def test_cli_eval_moonshine_base(speech_dir, capsys):
    pytest.importorskip("moonshine_cpp")
    import json

    from quasr.cli import main

    assert main(["eval", "moonshine-base", "--data", str(speech_dir / "prompts"), "--language", "en", "--limit", "3",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n_clips"] == 3 and r["wer"] < 20 and 240 < r["size_mb"] < 250
