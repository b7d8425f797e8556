"""Convert Moonshine's ONNX Runtime `.ort` export (encoder_model.ort + decoder_model_merged.ort, as
shipped by moonshine-cpp) into transformers' MoonshineForConditionalGeneration + processor.

The weights are int8 with a per-tensor float scale and float zero point, dequantized in the graph
by Cast -> Mul(scale) -> Add(zero_point); graph_import follows each to the node that uses it, whose
name carries the module path. docs/MODELS.md has the name map.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch

from .graph_import import graph_state_dict
from .ort import OrtFormatError, read_ort_model

# export-time module names -> transformers'
_RENAMES = {"dense": "o_proj", "up_proj": "fc1", "down_proj": "fc2"}


def _path(p: str) -> str:
    return p if p.startswith("model.") else f"model.encoder.{p}"  # the encoder export has no prefix


def ort_state_dict(path) -> dict[str, torch.Tensor]:
    sd = graph_state_dict(read_ort_model(path), None, _RENAMES, _path)
    # the decoder's output projection reads the embedding table (tied); keep only the table
    return {k: v for k, v in sd.items() if not k.startswith("proj_out")}


def _layer_count(sd: dict, side: str) -> int:
    idx = {int(m.group(1)) for k in sd if (m := re.match(rf"model\.{side}\.layers\.(\d+)\.", k))}
    if not idx or idx != set(range(len(idx))):
        raise OrtFormatError(f"{side} layers in the graph are not 0..N-1: {sorted(idx)}")
    return len(idx)


def convert_moonshine(encoder_ort, decoder_ort, tokenizer_json):
    """Return (MoonshineForConditionalGeneration in float32, Wav2Vec2Processor)."""
    from transformers import (
        GenerationConfig,
        MoonshineConfig,
        MoonshineForConditionalGeneration,
        PreTrainedTokenizerFast,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Processor,
    )

    sd = ort_state_dict(encoder_ort)
    for k, v in ort_state_dict(decoder_ort).items():
        if k in sd:
            raise OrtFormatError(f"{k} appears in both the encoder and the decoder graph")
        sd[k] = v
    hidden = sd["model.encoder.conv1.weight"].shape[0]
    heads = 8  # not stored in the graph; both released Moonshine sizes use 8 heads
    head_dim = hidden // heads
    config = MoonshineConfig(
        vocab_size=sd["model.decoder.embed_tokens.weight"].shape[0],
        hidden_size=hidden,
        intermediate_size=sd["model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        encoder_num_hidden_layers=_layer_count(sd, "encoder"),
        decoder_num_hidden_layers=_layer_count(sd, "decoder"),
        encoder_num_attention_heads=heads,
        decoder_num_attention_heads=heads,
        encoder_num_key_value_heads=heads,
        decoder_num_key_value_heads=heads,
        max_position_embeddings=512,
        # rotary dim = 2 * len(inv_freq); base: 32 of 52 -> 0.62 (tiny: 32 of 36 -> 0.9)
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": {52: 0.62, 36: 0.9}.get(head_dim, 0.62)},
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, pad_token_id=2,
        tie_word_embeddings=True,
    )
    model = MoonshineForConditionalGeneration(config)
    expected = set(model.state_dict()) - {"proj_out.weight"}
    missing, extra = expected - set(sd), set(sd) - expected
    if missing or extra:
        raise OrtFormatError(f"Moonshine graph does not match the architecture: missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}")
    shapes = model.state_dict()
    sd = {k: v.reshape(shapes[k].shape) if v.numel() == shapes[k].numel() else v for k, v in sd.items()}  # [C,1] norms
    model.load_state_dict(sd, strict=False)
    model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, pad_token_id=2
    )
    model.eval()

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_json), bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=False, return_attention_mask=True
    )
    return model, Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


# tokenizer.json ships with quasr (byte-identical copy from useful-moonshine-onnx==20251121, MIT):
# moonshine-cpp has only a decode-only tokenizer.bin. assets/moonshine/SOURCE.md has the provenance.
TOKENIZER_JSON = Path(__file__).resolve().parents[1] / "assets" / "moonshine" / "tokenizer.json"
TOKENIZER_SHA256 = "b68b995a58b3373db6c4f46864a9db50cd1333d086150ffa2c1096581ede9c10"


def bundled_tokenizer() -> Path:
    """The Moonshine tokenizer.json shipped in quasr's package data, checked against its sha256."""
    if not TOKENIZER_JSON.is_file():
        raise FileNotFoundError(f"Moonshine tokenizer {TOKENIZER_JSON} missing from the quasr install; reinstall quasr")
    digest = hashlib.sha256(TOKENIZER_JSON.read_bytes()).hexdigest()
    if digest != TOKENIZER_SHA256:
        raise OrtFormatError(f"Moonshine tokenizer {TOKENIZER_JSON} has sha256 {digest}, expected {TOKENIZER_SHA256}")
    return TOKENIZER_JSON


def moonshine_files(package_dir: Path, size: str = "base") -> tuple[Path, Path, Path]:
    """(encoder .ort, decoder .ort, tokenizer.json): the graphs from moonshine-cpp's directory, the
    tokenizer from quasr's own package data."""
    d = Path(package_dir) / "models" / f"{size}-en"
    graphs = (d / "encoder_model.ort", d / "decoder_model_merged.ort")
    for f in graphs:
        if not f.exists():
            raise FileNotFoundError(f"Moonshine file {f} missing; reinstall moonshine-cpp==0.1.4")
    return (*graphs, bundled_tokenizer())
