"""The graphs `quasr export --format onnx` writes, as torch modules over a model whose packed layers
were replaced by their ORT forms (onnx_layers.to_ort_modules). Plain tensors in and out, so ONNX
Runtime (or any caller) drives them without transformers' cache objects.

Whisper (encoder-decoder, as whisper.cpp and CTranslate2 split it):
    encoder.onnx  input_features [B, n_mels, 3000]          -> cross_kv [L, 2, B, H, 1500, D]
                  (the encoder, then every decoder layer's cross-attention keys and values, projected once)
    decoder.onnx  input_ids [B, T], past_kv [L, 2, B, H, P, D], cross_kv
                                                             -> logits [B, V] (of the last position),
                                                                present_kv [L, 2, B, H, P + T, D]
    P = 0 at the first step (the prompt), then each step feeds one token and the previous present_kv.
Moonshine (the same split, over the raw waveform, rotary self-attention):
    encoder.onnx  input_values [B, S], attention_mask [B, S] -> cross_kv [L, 2, B, KVH, F, D],
                                                                encoder_mask [B, F] (1: a frame of audio)
    decoder.onnx  input_ids, past_kv, cross_kv, encoder_mask -> logits [B, V], present_kv
Wav2Vec2 (CTC): model.onnx  input_values [B, S] -> logits [B, frames, V].

The Whisper decoder step is whisper_greedy's (itself checked against transformers' generate) with
the cache concatenated instead of preallocated; Moonshine's follows transformers' MoonshineDecoder
(rotary embeddings on the self-attention queries and keys, keys cached after rotation, gated MLP),
calling the model's own modules; tests compare both with quasr's own transcripts (for Moonshine,
transformers' generate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _heads_of(y: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, T, H*D) -> (B, H, T, D)."""
    b, t, _ = y.shape
    return y.reshape(b, t, -1, head_dim).transpose(1, 2)


def _cross_kv(layers, states: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[L, 2, B, H, S, D]: every decoder layer's cross-attention keys and values of the encoder states."""
    return torch.stack([torch.stack([_heads_of(layer.encoder_attn.k_proj(states), head_dim),
                                     _heads_of(layer.encoder_attn.v_proj(states), head_dim)]) for layer in layers])


class WhisperEncoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder = model.model.encoder
        self.layers = model.model.decoder.layers
        self.head_dim = model.config.d_model // model.config.decoder_attention_heads

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_features).last_hidden_state
        return _cross_kv(self.layers, states, self.head_dim)


class WhisperDecoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.decoder = model.model.decoder
        self.proj_out = model.proj_out
        self.head_dim = model.config.d_model // model.config.decoder_attention_heads

    def forward(self, input_ids: torch.Tensor, past_kv: torch.Tensor, cross_kv: torch.Tensor):
        dec, d = self.decoder, self.head_dim
        b, n = input_ids.shape
        start = past_kv.shape[4]
        h = dec.embed_tokens(input_ids) + dec.embed_positions.weight[start: start + n].to(torch.float32)
        mask = _causal_mask(start, n, h.device)
        present = []
        for i, layer in enumerate(dec.layers):
            sa, ca = layer.self_attn, layer.encoder_attn
            x = layer.self_attn_layer_norm(h)
            q = _heads_of(sa.q_proj(x) * sa.scaling, d)
            k = torch.cat([past_kv[i, 0], _heads_of(sa.k_proj(x), d)], 2)
            v = torch.cat([past_kv[i, 1], _heads_of(sa.v_proj(x), d)], 2)
            present.append(torch.stack([k, v]))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
            h = h + sa.out_proj(a.transpose(1, 2).reshape(b, n, -1))
            q = _heads_of(ca.q_proj(layer.encoder_attn_layer_norm(h)) * ca.scaling, d)
            a = F.scaled_dot_product_attention(q, cross_kv[i, 0], cross_kv[i, 1], scale=1.0)
            h = h + ca.out_proj(a.transpose(1, 2).reshape(b, n, -1))
            h = h + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(h))))
        logits = self.proj_out(dec.layer_norm(h[:, -1:]))[:, 0]
        return logits.to(torch.float32), torch.stack(present)


def _causal_mask(start, n: int, device) -> torch.Tensor:
    """[n, start + n] additive mask: query i (position start + i) sees keys 0 .. start + i."""
    seen = torch.arange(start + n, device=device)[None, :] <= (start + torch.arange(n, device=device))[:, None]
    return torch.zeros(seen.shape, dtype=torch.float32, device=device).masked_fill(~seen, float("-inf"))


def _attend(q, k, v, mask, scale):
    """Attention with grouped key/value heads repeated to the query heads."""
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


MOONSHINE_STRIDE = 64 * 3 * 2  # the conv front-end's total stride (samples per encoder frame)


class MoonshineEncoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder = model.model.encoder
        self.layers = model.model.decoder.layers
        self.head_dim = model.model.decoder.layers[0].encoder_attn.head_dim

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor):
        enc = self.encoder
        x = torch.tanh(enc.conv1(input_values.to(torch.float32).unsqueeze(1)))
        x = F.gelu(enc.conv2(enc.groupnorm(x)))
        h = F.gelu(enc.conv3(x)).permute(0, 2, 1)
        frames = h.shape[1]
        mask = attention_mask[:, ::MOONSHINE_STRIDE][:, :frames]  # as transformers downsamples it
        additive = torch.zeros(mask.shape, dtype=torch.float32).masked_fill(mask == 0, float("-inf"))[:, None, None, :]
        positions = torch.arange(frames, device=h.device)[None]
        rotary = enc.rotary_emb(h, positions)
        for layer in enc.layers:
            h = layer(h, attention_mask=additive, position_ids=positions, position_embeddings=rotary)
        states = enc.layer_norm(h)
        return _cross_kv(self.layers, states, self.head_dim), mask.to(torch.int64)


class MoonshineDecoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.decoder = model.model.decoder
        self.proj_out = model.proj_out
        self.head_dim = self.decoder.layers[0].self_attn.head_dim

    def forward(self, input_ids, past_kv, cross_kv, encoder_mask):
        from transformers.models.moonshine.modeling_moonshine import apply_rotary_pos_emb

        dec, d = self.decoder, self.head_dim
        b, n = input_ids.shape
        start = past_kv.shape[4]
        h = dec.embed_tokens(input_ids).to(torch.float32)
        rotary = dec.rotary_emb(h, (start + torch.arange(n, device=h.device))[None])
        mask = _causal_mask(start, n, h.device)
        cross_mask = torch.zeros(encoder_mask.shape, dtype=torch.float32).masked_fill(
            encoder_mask == 0, float("-inf"))[:, None, None, :]
        present = []
        for i, layer in enumerate(dec.layers):
            sa, ca = layer.self_attn, layer.encoder_attn
            x = layer.input_layernorm(h)
            q, k = apply_rotary_pos_emb(_heads_of(sa.q_proj(x), d), _heads_of(sa.k_proj(x), d), *rotary)
            k = torch.cat([past_kv[i, 0], k], 2)
            v = torch.cat([past_kv[i, 1], _heads_of(sa.v_proj(x), d)], 2)
            present.append(torch.stack([k, v]))
            a = _attend(q, k, v, mask, sa.scaling)
            h = h + sa.o_proj(a.transpose(1, 2).reshape(b, n, -1))
            q = _heads_of(ca.q_proj(layer.post_attention_layernorm(h)), d)
            a = _attend(q, cross_kv[i, 0], cross_kv[i, 1], cross_mask, ca.scaling)
            h = h + ca.o_proj(a.transpose(1, 2).reshape(b, n, -1))
            h = h + layer.mlp(layer.final_layernorm(h))
        logits = self.proj_out(dec.norm(h[:, -1:]))[:, 0]
        return logits.to(torch.float32), torch.stack(present)


class CtcGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return self.model(input_values).logits.to(torch.float32)
