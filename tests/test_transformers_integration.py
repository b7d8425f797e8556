"""quasr checkpoints in transformers' own from_pretrained / save_pretrained / pipeline (issue 25):
loaded as packed modules (no float weight of a quantized layer), bit-exact against what quasr
saved, verified against the saved digests, and quantized on load with QuasrConfig(bits=...)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCTC, AutoModelForSpeechSeq2Seq, pipeline

from conftest import FAMILIES, tiny_family
from quasr import QuasrConfig
from quasr.models import load_model
from quasr.nn import QuantConv1d, QuantLinear
from quasr.plan import current_plan, swap, uniform_plan
from quasr.plan.swap import rtn_quantizer
from quasr.serialize import CheckpointError, save_quantized


def _auto(family):
    return AutoModelForCTC if family == "wav2vec2" else AutoModelForSpeechSeq2Seq


def _quantized(tmp_path, family, bits=4):
    model, processor = tiny_family(family, tmp_path)
    plan = uniform_plan(model, bits, 32)
    if family == "whisper":  # mixed precision, a kept layer, and the tied output projection quantized
        plan["layers"]["model.encoder.layers.0.fc1"] = dict(plan["layers"]["model.encoder.layers.0.fc1"], bits=3)
        plan["layers"]["model.decoder.layers.1.fc2"] = "keep"
    swap(model, plan, progress=False)
    out = tmp_path / f"q_{family}"
    save_quantized(model, processor, out)
    return model, processor, out


def _inputs(model, family):
    g = torch.Generator().manual_seed(0)
    if family == "wav2vec2":
        return {"input_values": torch.randn(1, 8000, generator=g)}
    if family == "moonshine":
        return {"input_values": torch.randn(1, 8000, generator=g), "decoder_input_ids": torch.tensor([[1, 5, 7]])}
    return {"input_features": torch.randn(1, 80, 3000, generator=g), "decoder_input_ids": torch.tensor([[1, 5, 7]])}


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    bad = [k for k in sa if sa[k].dtype != sb[k].dtype or not torch.equal(sa[k], sb[k])]
    assert not bad, bad[:4]


@pytest.mark.parametrize("family", FAMILIES)
def test_from_pretrained_loads_packed_model_bit_exactly(tmp_path, family):
    model, _, out = _quantized(tmp_path, family)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "quasr"
    assert config["quantization_config"]["plan"] == current_plan(model)
    loaded = _auto(family).from_pretrained(out)
    assert loaded.is_quantized and isinstance(loaded.config.quantization_config, QuasrConfig)
    packed = {n for n, m in loaded.named_modules() if isinstance(m, (QuantLinear, QuantConv1d))}
    assert packed == {n for n, m in model.named_modules() if isinstance(m, (QuantLinear, QuantConv1d))}
    _same_state(model, loaded)
    if family == "whisper":  # the tied embedding reads the packed output projection, no float table
        assert type(loaded.model.decoder.embed_tokens).__name__ == "QuantTiedEmbedding"
        assert "model.decoder.embed_tokens.weight" not in loaded.state_dict()
    with torch.no_grad():
        ours, theirs = model(**_inputs(model, family)), loaded(**_inputs(model, family))
    assert torch.equal(ours.logits, theirs.logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_round_trip_and_quasr_reads_it(tmp_path, family):
    model, processor, out = _quantized(tmp_path, family)
    loaded = _auto(family).from_pretrained(out)
    again = tmp_path / "hf_saved"
    loaded.save_pretrained(again)
    processor.save_pretrained(again)
    assert not (again / "quasr_plan.json").exists()  # transformers wrote it: digests travel in the header
    _same_state(model, _auto(family).from_pretrained(again))
    _same_state(model, load_model(str(again))[0])


def test_quantize_on_load_matches_quasr_rtn(tmp_path):
    model, processor = tiny_family("whisper", tmp_path)
    src = tmp_path / "float"
    model.save_pretrained(src)
    processor.save_pretrained(src)
    loaded = AutoModelForSpeechSeq2Seq.from_pretrained(src, quantization_config=QuasrConfig(bits=4, group_size=32,
                                                                                             keep=["*fc2"]))
    expected = swap(model, uniform_plan(model, 4, 32, keep=("*fc2",)), rtn_quantizer("mse"), progress=False)
    _same_state(expected, loaded)
    assert isinstance(loaded.model.decoder.layers[0].fc2, torch.nn.Linear)
    loaded.save_pretrained(tmp_path / "saved")
    _same_state(expected, AutoModelForSpeechSeq2Seq.from_pretrained(tmp_path / "saved"))


@pytest.mark.parametrize("family", ["moonshine", "wav2vec2"])  # whisper's pipeline needs its real tokenizer: below
def test_pipeline_transcribes_like_quasr(tmp_path, family):
    model, _, out = _quantized(tmp_path, family)
    wave = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    kwargs = {} if family == "wav2vec2" else {"generate_kwargs": {"max_new_tokens": 8}}
    by_path = pipeline("automatic-speech-recognition", model=str(out))(wave, **kwargs)["text"]
    reference = load_model(str(out))
    by_object = pipeline("automatic-speech-recognition", model=reference[0], tokenizer=reference[1].tokenizer,
                         feature_extractor=reference[1].feature_extractor)(wave, **kwargs)["text"]
    assert by_path == by_object and by_path.strip()


def test_edited_plan_or_tampered_tensor_is_refused(tmp_path):
    _, _, out = _quantized(tmp_path, "whisper")
    config_file = out / "config.json"
    config = json.loads(config_file.read_text())
    edited = json.loads(json.dumps(config))
    edited["quantization_config"]["plan"]["layers"]["model.encoder.layers.1.fc1"]["symmetric"] = True
    config_file.write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match="holds a different plan"):
        AutoModelForSpeechSeq2Seq.from_pretrained(out)
    with pytest.raises(CheckpointError, match="holds a different plan"):
        load_model(str(out))
    config_file.write_text(json.dumps(config))

    loaded = AutoModelForSpeechSeq2Seq.from_pretrained(out)
    saved = tmp_path / "hf_saved"
    loaded.save_pretrained(saved)
    file = saved / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        meta = f.metadata()
    state = load_file(str(file))
    key = "model.encoder.layers.0.fc1.scales"
    state[key] = state[key] * 1.5
    save_file(state, str(file), metadata=meta)
    with pytest.raises(CheckpointError, match="differ from the saved ones"):
        AutoModelForSpeechSeq2Seq.from_pretrained(saved)


def test_bad_configs_get_clear_errors():
    with pytest.raises(ValueError, match="needs bits"):
        QuasrConfig()
    with pytest.raises(ValueError, match="bits"):
        QuasrConfig(bits=9)
    with pytest.raises(ValueError, match="hessian"):
        QuasrConfig(bits=4, clip="hessian")
    with pytest.raises(ValueError, match="unknown quasr field"):
        QuasrConfig.from_dict({"quant_method": "quasr", "bits": 4, "codebook": 1})
    with pytest.raises(ValueError, match="version"):
        QuasrConfig(bits=4, format_version=99)


def test_split_device_map_is_refused():
    from quasr.integrations import QuasrHfQuantizer  # called as from_pretrained does (device_map needs accelerate)

    with pytest.raises(ValueError, match="one device"):
        QuasrHfQuantizer(QuasrConfig(bits=4)).validate_environment(device_map={"wav2vec2": "cpu", "lm_head": "disk"})


@pytest.mark.slow
def test_real_whisper_pipeline_transcribes_like_quasr(tmp_path, whisper_tiny_en, speech_dir):
    import copy

    from quasr.adapters import get_adapter
    from quasr.audio import load_audio

    model, processor = whisper_tiny_en
    q = swap(copy.deepcopy(model), uniform_plan(model, 4, 128), progress=False)
    save_quantized(q, processor, tmp_path / "w4")
    wave = load_audio(speech_dir / "clips" / "audio" / "jfk__jfk.flac")
    text = pipeline("automatic-speech-recognition", model=str(tmp_path / "w4"))(wave)["text"]
    # the same model object in the same pipeline (transformers' generate, not quasr's greedy loop)
    same = pipeline("automatic-speech-recognition", model=q, tokenizer=processor.tokenizer,
                    feature_extractor=processor.feature_extractor)(wave)["text"]
    assert text == same
    assert "ask not what your country" in text.lower()
    assert "ask not what your country" in get_adapter(q, processor).transcribe([wave])[0].lower()
