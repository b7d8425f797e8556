"""Convert a CTranslate2 Whisper model (model.bin + tokenizer.json + config.json) into
transformers' WhisperForConditionalGeneration and WhisperProcessor. docs/MODELS.md has the map."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .ct2 import CT2FormatError, read_ct2_model


def _ln(t: dict, src: str) -> dict:
    return {"weight": t[f"{src}/gamma"], "bias": t[f"{src}/beta"]}


def _linear(t: dict, src: str) -> dict:
    out = {"weight": t[f"{src}/weight"]}
    if f"{src}/bias" in t:
        out["bias"] = t[f"{src}/bias"]
    return out


def _split_rows(lin: dict, parts: int) -> list[dict]:
    ws = lin["weight"].chunk(parts, 0)
    bs = lin["bias"].chunk(parts, 0) if "bias" in lin else [None] * parts
    return [{"weight": w, **({"bias": b} if b is not None else {})} for w, b in zip(ws, bs)]


def _put(sd: dict, prefix: str, params: dict, drop_bias: bool = False) -> None:
    for k, v in params.items():
        if k == "bias" and drop_bias:
            if v.abs().max() > 0:  # HF's k_proj has no bias; CTranslate2 stores it as zeros
                raise CT2FormatError(f"{prefix}: expected a zero k bias, found max |b| = {v.abs().max():.3g}")
            continue
        sd[f"{prefix}.{k}"] = v


def _attention(sd: dict, t: dict, src: str, dst: str, cross: bool) -> None:
    if cross:
        _put(sd, f"{dst}.q_proj", _linear(t, f"{src}/linear_0"))
        k, v = _split_rows(_linear(t, f"{src}/linear_1"), 2)
        out = _linear(t, f"{src}/linear_2")
    else:
        q, k, v = _split_rows(_linear(t, f"{src}/linear_0"), 3)
        _put(sd, f"{dst}.q_proj", q)
        out = _linear(t, f"{src}/linear_1")
    _put(sd, f"{dst}.k_proj", k, drop_bias=True)
    _put(sd, f"{dst}.v_proj", v)
    _put(sd, f"{dst}.out_proj", out)


def _count_layers(t: dict, side: str) -> int:
    n = 0
    while f"{side}/layer_{n}/ffn/linear_0/weight" in t:
        n += 1
    return n


def convert_whisper(model_bin: str | Path | bytes, tokenizer_json: str | Path, ct2_config: str | Path | None = None):
    """Return (WhisperForConditionalGeneration in float32, WhisperProcessor)."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    spec, t = read_ct2_model(model_bin)
    if spec and spec != "WhisperSpec":
        raise CT2FormatError(f"expected a CTranslate2 WhisperSpec model, got {spec!r}")
    try:
        t = {k: (v.float() if v.is_floating_point() else v) for k, v in t.items()}
        d_model = t["encoder/conv1/weight"].shape[0]
        n_mels = t["encoder/conv1/weight"].shape[1]
        vocab = t["decoder/embeddings/weight"].shape[0]
        enc_layers, dec_layers = _count_layers(t, "encoder"), _count_layers(t, "decoder")
        config = WhisperConfig(
            vocab_size=vocab,
            num_mel_bins=n_mels,
            d_model=d_model,
            encoder_layers=enc_layers,
            decoder_layers=dec_layers,
            encoder_attention_heads=int(t["encoder/num_heads"]),
            decoder_attention_heads=int(t["decoder/num_heads"]),
            encoder_ffn_dim=t["encoder/layer_0/ffn/linear_0/weight"].shape[0],
            decoder_ffn_dim=t["decoder/layer_0/ffn/linear_0/weight"].shape[0],
            max_source_positions=t["encoder/position_encodings/encodings"].shape[0],
            max_target_positions=t["decoder/position_encodings/encodings"].shape[0],
            tie_word_embeddings=True,
        )
        sd: dict[str, torch.Tensor] = {}
        for i in (1, 2):
            _put(sd, f"model.encoder.conv{i}", _linear(t, f"encoder/conv{i}"))
        sd["model.encoder.embed_positions.weight"] = t["encoder/position_encodings/encodings"]
        sd["model.decoder.embed_positions.weight"] = t["decoder/position_encodings/encodings"]
        sd["model.decoder.embed_tokens.weight"] = t["decoder/embeddings/weight"]
        for side, n in (("encoder", enc_layers), ("decoder", dec_layers)):
            _put(sd, f"model.{side}.layer_norm", _ln(t, f"{side}/layer_norm"))
            for i in range(n):
                src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
                _put(sd, f"{dst}.self_attn_layer_norm", _ln(t, f"{src}/self_attention/layer_norm"))
                _attention(sd, t, f"{src}/self_attention", f"{dst}.self_attn", cross=False)
                if side == "decoder":
                    _put(sd, f"{dst}.encoder_attn_layer_norm", _ln(t, f"{src}/attention/layer_norm"))
                    _attention(sd, t, f"{src}/attention", f"{dst}.encoder_attn", cross=True)
                _put(sd, f"{dst}.final_layer_norm", _ln(t, f"{src}/ffn/layer_norm"))
                _put(sd, f"{dst}.fc1", _linear(t, f"{src}/ffn/linear_0"))
                _put(sd, f"{dst}.fc2", _linear(t, f"{src}/ffn/linear_1"))
    except KeyError as exc:
        raise CT2FormatError(f"CTranslate2 Whisper model lacks variable {exc}") from None

    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if m != "proj_out.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise CT2FormatError(f"conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.eval()

    tokenizer = WhisperTokenizerFast(tokenizer_file=str(tokenizer_json))
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=n_mels), tokenizer=tokenizer)
    ct2cfg = json.loads(Path(ct2_config).read_text()) if ct2_config and Path(ct2_config).exists() else {}
    model.generation_config = _generation_config(GenerationConfig, tokenizer, config, ct2cfg)
    for k in ("decoder_start_token_id", "eos_token_id", "pad_token_id", "bos_token_id"):
        setattr(model.config, k, getattr(model.generation_config, k))
    # transformers 5 wants suppress-token settings in generation_config only
    model.config.suppress_tokens = None
    model.config.begin_suppress_tokens = None
    return model, processor


def _generation_config(GenerationConfig, tok, config, ct2cfg: dict):
    ids = tok.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    multilingual = config.vocab_size >= 51865
    kw = dict(
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        bos_token_id=eot,
        no_timestamps_token_id=ids("<|notimestamps|>"),
        prev_sot_token_id=ids("<|startofprev|>"),
        max_length=config.max_target_positions,
        max_initial_timestamp_index=50,
        is_multilingual=multilingual,
        suppress_tokens=list(ct2cfg.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2cfg.get("suppress_ids_begin", [220, eot])),
    )
    if ct2cfg.get("alignment_heads"):
        kw["alignment_heads"] = ct2cfg["alignment_heads"]
    if multilingual:
        lang_ids = ct2cfg.get("lang_ids") or []
        kw["lang_to_id"] = {tok.convert_ids_to_tokens(i): i for i in lang_ids}
        kw["task_to_id"] = {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")}
    return GenerationConfig(**kw)
