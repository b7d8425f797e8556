"""A quasr Whisper model as a whisper.cpp model file (the legacy ggml format whisper.cpp loads:
magic 0x67676d6c, hyperparameters, mel filters, vocabulary, then named tensors).

whisper.cpp stores every weight matrix (and the token embedding, which is also its output
projection) in ONE type, named by the header's ftype; convolutions are f16, biases, norms and
position embeddings f32. So a mixed-precision quasr model goes into the smallest ggml block type
that holds every quantized layer's codes exactly:

    q4_0  x = (q - 8)·d        codes whose (code − zero) is an integer in [−8, 7]   (2–3-bit, 4-bit symmetric)
    q4_1  x = q·d + m          codes < 16, m = −zero·scale rounded to fp16          (2–4-bit)
    q5_0  x = (q − 16)·d       (code − zero) an integer in [−16, 15]
    q5_1  x = q·d + m          codes < 32                                            (2–5-bit)
    q8_0  x = q·d              (code − zero) an integer in [−128, 127]               (6–7-bit RTN, 8-bit symmetric)

(blocks of 32 along K, one fp16 d per block: any quasr group size that is a multiple of 32 maps
exactly, its scale repeated per block). A layer no type holds exactly (8-bit asymmetric, 6-7-bit
with fractional zeros), a float layer, and a layer with input transforms (rotation, smoothing:
whisper.cpp cannot apply them, so the transform is folded into the weight) is re-quantized into
the chosen type with ggml's own rounding, and the report says so with its error. Activation
quantization settings are dropped (whisper.cpp quantizes activations its own way).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..format import unpack_codes

MAGIC = 0x67676D6C
QNT_VERSION = 2  # ggml's quantization format version, folded into the header's ftype
BLOCK = 32
# name -> (ggml type id, ggml ftype id, bits per q, offset c for "_0" types (x = (q - c)·d) or None for "_1" (x = q·d + m), bytes per block)
TYPES = {
    "q4_0": (2, 2, 4, 8, 18),
    "q4_1": (3, 3, 4, None, 20),
    "q5_0": (6, 8, 5, 16, 22),
    "q5_1": (7, 9, 5, None, 24),
    "q8_0": (8, 7, 8, 0, 34),
}  # and "f16" (type 1, ftype 1): every matrix dequantized to float16
BY_SIZE = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")
F32, F16 = 0, 1


class GgmlExportError(ValueError):
    pass


@dataclass
class GgmlReport:
    """What went where: the chosen type, each weight matrix's fate, the file's size."""

    ggml_type: str
    layers: dict[str, str] = field(default_factory=dict)  # ggml name -> "exact" | "exact up to fp16 offset (max err e)" | "re-quantized ..."
    bytes: int = 0

    def requantized(self) -> list[str]:
        return [n for n, how in self.layers.items() if how.startswith("re-quantized")]

    def lines(self) -> list[str]:
        out = [f"whisper.cpp file: {self.bytes / 1e6:.2f} MB, every weight matrix as {self.ggml_type}"]
        kinds: dict[str, list[float]] = {}
        for how in self.layers.values():
            err = float(how.split("max err ")[1].rstrip(")")) if "max err" in how else 0.0
            kinds.setdefault(how.split(" (")[0], []).append(err)
        out += [f"  {len(e)} layer(s) {k}" + (f" (max err {max(e):.2e})" if max(e) else "") for k, e in sorted(kinds.items())]
        again = self.requantized()
        out += [f"  {n}: {self.layers[n]}" for n in again[:6]] + ([f"  ... and {len(again) - 6} more"] if len(again) > 6 else [])
        return out


# -- names -----------------------------------------------------------------------------------------
_LAYER_PARTS = {
    "self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key", "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query", "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value", "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln", "fc1": "mlp.0", "fc2": "mlp.2", "final_layer_norm": "mlp_ln",
}
_TOP = {
    "model.encoder.conv1": "encoder.conv1", "model.encoder.conv2": "encoder.conv2",
    "model.encoder.embed_positions": "encoder.positional_embedding", "model.encoder.layer_norm": "encoder.ln_post",
    "model.decoder.embed_tokens": "decoder.token_embedding", "model.decoder.embed_positions": "decoder.positional_embedding",
    "model.decoder.layer_norm": "decoder.ln",
}


def ggml_module_name(hf_name: str) -> str:
    """transformers' Whisper module name -> whisper.cpp's (OpenAI's) name."""
    if hf_name in _TOP:
        return _TOP[hf_name]
    parts = hf_name.split(".")
    if len(parts) >= 5 and parts[0] == "model" and parts[2] == "layers":
        rest = ".".join(parts[4:])
        if rest in _LAYER_PARTS:
            return f"{parts[1]}.blocks.{parts[3]}.{_LAYER_PARTS[rest]}"
    raise GgmlExportError(f"{hf_name}: no whisper.cpp tensor corresponds to this module")


# -- blocks ----------------------------------------------------------------------------------------
def _pack_blocks(kind: str, q: np.ndarray, d: np.ndarray, m: np.ndarray | None) -> bytes:
    """q: int [N, K] block values (0..2^w-1, or int8 for q8_0); d, m: float16 [N, K/32]."""
    n, k = q.shape
    nb = k // BLOCK
    q = q.reshape(n, nb, BLOCK)
    parts = [d.astype("<f2").reshape(n, nb, 1).view(np.uint8)]
    if m is not None:
        parts.append(m.astype("<f2").reshape(n, nb, 1).view(np.uint8))
    if kind == "q8_0":
        parts.append(q.astype(np.int8).view(np.uint8))
    else:
        if TYPES[kind][2] == 5:  # the fifth bit of element j is bit j of a little-endian uint32
            high = ((q >> 4) & 1).astype(np.uint32) << np.arange(BLOCK, dtype=np.uint32)
            parts.append(high.sum(-1, dtype=np.uint32).astype("<u4").reshape(n, nb, 1).view(np.uint8))
        low = (q & 15).astype(np.uint8)
        parts.append(low[..., :16] | (low[..., 16:] << 4))  # element j in the low nibble, j + 16 in the high
    return np.concatenate(parts, axis=-1).tobytes()


def dequantize_blocks(kind: str, raw: bytes, n: int, k: int) -> np.ndarray:
    """ggml's decode of `raw` (float32 [n, k]): the reference the export is tested against."""
    _, _, w, c, size = TYPES[kind]
    nb = k // BLOCK
    b = np.frombuffer(raw, np.uint8).reshape(n, nb, size)
    d = b[..., 0:2].copy().view("<f2").astype(np.float32)
    pos = 2
    m = None
    if c is None:
        m, pos = b[..., 2:4].copy().view("<f2").astype(np.float32), 4
    if kind == "q8_0":
        q = b[..., pos:].view(np.int8).astype(np.float32)
    else:
        high = np.zeros((n, nb, BLOCK), np.int32)
        if w == 5:
            bits = b[..., pos:pos + 4].copy().view("<u4").astype(np.int64)
            high = (((bits >> np.arange(BLOCK)) & 1) << 4).astype(np.int32)
            pos += 4
        qs = b[..., pos:pos + 16].astype(np.int32)
        q = (np.concatenate([qs & 15, qs >> 4], axis=-1) | high).astype(np.float32)
    x = (q - c) * d if c is not None else q * d + m
    return x.reshape(n, k)


def _requantize(kind: str, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """ggml's reference rounding of a float [N, K] weight into `kind` blocks."""
    _, _, bits, c, _ = TYPES[kind]
    n, k = w.shape
    x = w.reshape(n, k // BLOCK, BLOCK).astype(np.float32)
    if c is None:  # q·d + m over [min, max]
        lo, hi = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
        d = (hi - lo) / ((1 << bits) - 1)
        inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
        q = np.clip(np.floor((x - lo) * inv + 0.5), 0, (1 << bits) - 1)
        return q.reshape(n, k).astype(np.int32), d[..., 0].astype(np.float16), lo[..., 0].astype(np.float16)
    if kind == "q8_0":
        d = np.abs(x).max(-1, keepdims=True) / 127
        inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
        q = np.round(x * inv)
        return q.reshape(n, k).astype(np.int32), d[..., 0].astype(np.float16), None
    # (q - c)·d with d = the value of largest magnitude / -c, as ggml does
    idx = np.abs(x).argmax(-1)[..., None]
    peak = np.take_along_axis(x, idx, -1)
    d = peak / -c
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    q = np.clip(np.floor(x * inv + c + 0.5), 0, 2 * c - 1)
    return q.reshape(n, k).astype(np.int32), d[..., 0].astype(np.float16), None


def _exact_blocks(kind: str, module) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """The packed codes of a quantized layer as `kind` blocks, when `kind` holds them exactly."""
    _, _, bits, c, _ = TYPES[kind]
    pw = module.packed_weight()
    if pw.padded_in_features != pw.in_features or module.bits > bits:
        return None
    codes = unpack_codes(pw.packed.cpu(), pw.bits).numpy().astype(np.int64)
    n, k = codes.shape
    per_block = pw.group_size // BLOCK  # quasr groups are whole ggml blocks: repeat each group's scale
    scale = np.repeat(pw.scales.cpu().numpy(), per_block, axis=1)
    zero = (np.full_like(scale, 1 << (pw.bits - 1)) if pw.zeros is None
            else np.repeat(pw.zeros.cpu().numpy(), per_block, axis=1)).astype(np.float32)
    if c is None:
        return codes, scale, (-zero * scale.astype(np.float32)).astype(np.float16)
    if not np.array_equal(zero, np.round(zero)):
        return None
    q = codes - np.repeat(zero, BLOCK, axis=1).astype(np.int64) + c
    lo, hi = (-128, 127) if kind == "q8_0" else (0, (1 << bits) - 1)
    if q.min() < lo or q.max() > hi:
        return None
    return q, scale, None


# -- the model -------------------------------------------------------------------------------------
def _weight_matrices(model) -> dict[str, nn.Module]:
    """ggml name -> module, for every tensor whisper.cpp stores in the header's type."""
    from ..plan.schema import current_plan

    out = {}
    for name in current_plan(model)["layers"]:
        module = model.get_submodule(name)
        if name in ("model.encoder.conv1", "model.encoder.conv2"):
            continue
        if name == "proj_out":  # whisper.cpp's output projection is the token embedding
            out["decoder.token_embedding.weight"] = module
            continue
        out[ggml_module_name(name) + ".weight"] = module
    out.setdefault("decoder.token_embedding.weight", model.model.decoder.embed_tokens)
    return out


def _is_packed(module) -> bool:
    from ..nn import _Packed

    return isinstance(module, _Packed)


def _has_transform(module) -> bool:
    return any(getattr(module, a, None) is not None for a in ("rotation_signs", "input_mul", "input_shift"))


def _float_weight(module) -> tuple[np.ndarray, np.ndarray | None]:
    """The float weight (and bias) of a layer as it computes: packed weights dequantized, input
    transforms folded in by running the layer on the identity (y = W x + b is linear in x)."""
    from ..nn import QuantTiedEmbedding

    if isinstance(module, nn.Embedding):
        return module.weight.detach().float().cpu().numpy(), None
    if isinstance(module, QuantTiedEmbedding):
        module = module.source
    if not _is_packed(module):
        return module.weight.detach().float().cpu().numpy(), None if module.bias is None else module.bias.detach().float().cpu().numpy()
    if not _has_transform(module):
        return module.dequantized_weight().float().cpu().numpy(), None if module.bias is None else module.bias.detach().float().cpu().numpy()
    if module.act_bits:
        raise GgmlExportError("a layer with input transforms and quantized activations cannot be folded exactly; "
                              "export a weight-only (--act-bits 16) model")
    k = module.in_features
    dev = module.packed.device
    with torch.no_grad():
        bias = module(torch.zeros(1, k, device=dev)).float()
        w = (module(torch.eye(k, device=dev)).float() - bias).T
    return w.cpu().numpy(), bias[0].cpu().numpy()


def choose_type(model, forced: str | None = None) -> str:
    """The smallest block type that holds every quantized weight matrix exactly (else q8_0)."""
    if forced is not None:
        if forced not in TYPES and forced != "f16":
            raise GgmlExportError(f"--ggml-type {forced!r}: choose one of {list(TYPES) + ['f16']}")
        return forced
    packed = [m for m in _weight_matrices(model).values() if _is_packed(m) and not _has_transform(m)]
    if not packed:
        return "q8_0"
    for kind in BY_SIZE:
        if all(_exact_blocks(kind, m) is not None for m in packed):
            return kind
    return "q8_0"


def _vocab_bytes(tokenizer) -> list[bytes]:
    """The byte strings of the regular tokens, ids 0.. up to the first special token."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2's byte-level alphabet

    decoder = {u: b for b, u in bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    first = min(special) if special else len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(first)))
    try:
        return [bytes(decoder[ch] for ch in t) for t in tokens]
    except KeyError as exc:
        raise GgmlExportError(f"the tokenizer is not Whisper's byte-level BPE (character {exc} has no byte): "
                              f"whisper.cpp needs Whisper's own vocabulary") from None


def export_ggml(model, processor, out: str | Path, ggml_type: str | None = None) -> GgmlReport:
    """Write `model` (a quasr or float Whisper) as a whisper.cpp model file at `out`."""
    cfg = model.config
    if cfg.model_type != "whisper":
        raise GgmlExportError(f"whisper.cpp runs Whisper models only; this is {cfg.model_type}: export it with "
                              f"--format onnx")
    if cfg.encoder_ffn_dim != 4 * cfg.d_model or cfg.decoder_ffn_dim != 4 * cfg.d_model:
        raise GgmlExportError(f"whisper.cpp assumes MLPs 4x the width ({4 * cfg.d_model}); this model's are "
                              f"{cfg.encoder_ffn_dim}/{cfg.decoder_ffn_dim}")
    kind = choose_type(model, ggml_type)
    type_id, ftype = (F16, 1) if kind == "f16" else TYPES[kind][:2]
    report = GgmlReport(kind)
    fe, tok = processor.feature_extractor, processor.tokenizer
    filters = np.asarray(fe.mel_filters, np.float32).T  # [n_mels, n_fft/2 + 1]
    vocab = _vocab_bytes(tok)
    matrices = _weight_matrices(model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<12i", MAGIC, cfg.vocab_size, cfg.max_source_positions, cfg.d_model,
                            cfg.encoder_attention_heads, cfg.encoder_layers, cfg.max_target_positions, cfg.d_model,
                            cfg.decoder_attention_heads, cfg.decoder_layers, cfg.num_mel_bins,
                            ftype + 1000 * QNT_VERSION))
        f.write(struct.pack("<2i", *filters.shape))
        f.write(filters.astype("<f4").tobytes())
        f.write(struct.pack("<i", len(vocab)))
        for t in vocab:
            f.write(struct.pack("<i", len(t)) + t)

        def tensor(name: str, array: np.ndarray, ttype: int, data: bytes | None = None) -> None:
            shape = array.shape
            raw = name.encode()
            f.write(struct.pack("<3i", len(shape), len(raw), ttype))
            f.write(struct.pack(f"<{len(shape)}i", *reversed(shape)))  # ggml's ne[0] is the innermost dim
            f.write(raw)
            f.write(data if data is not None else array.astype("<f2" if ttype == F16 else "<f4").tobytes())

        def matrix(name: str, module) -> np.ndarray | None:
            """Write one weight matrix in the chosen type; returns its folded bias, if any."""
            if kind == "f16":
                w, bias = _float_weight(module)
                tensor(name, w, F16)
                report.layers[name] = "f16" if not _is_packed(module) else "f16 (dequantized)"
                return bias
            exact = _exact_blocks(kind, module) if _is_packed(module) and not _has_transform(module) else None
            if exact is None and module is model.model.decoder.embed_tokens and _is_packed(getattr(model, "proj_out", None)):
                exact = _exact_blocks(kind, model.proj_out)
            bias = None
            if exact is not None:
                q, d, m = exact
                data = _pack_blocks(kind, q, d, m)
                reference = (module.dequantized_weight() if _is_packed(module) else model.proj_out.dequantized_weight())
                n, k = q.shape
                err = float(np.abs(dequantize_blocks(kind, data, n, k) - reference.float().cpu().numpy()).max())
                report.layers[name] = "exact" if err == 0 else f"exact up to fp16 offset (max err {err:.2e})"
            else:
                w, bias = _float_weight(module)
                if w.shape[1] % BLOCK:
                    raise GgmlExportError(f"{name}: K = {w.shape[1]} is not a multiple of {BLOCK}, which ggml blocks need")
                q, d, m = _requantize(kind, w)
                data = _pack_blocks(kind, q, d, m)
                n, k = w.shape
                err = float(np.abs(dequantize_blocks(kind, data, n, k) - w).max())
                why = ("a float layer" if not _is_packed(module) and not isinstance(module, nn.Embedding)
                       else "a float embedding" if isinstance(module, nn.Embedding)
                       else "input transforms folded" if _has_transform(module) else f"{module.bits}-bit codes do not fit {kind}")
                report.layers[name] = f"re-quantized: {why} (max err {err:.2e})"
            n, k = q.shape
            tensor(name, np.empty((n, k), np.int8), type_id, data)
            return bias

        folded: dict[str, np.ndarray] = {}
        for name, module in matrices.items():
            b = matrix(name, module)
            if b is not None:
                folded[name[: -len(".weight")] + ".bias"] = b
        for name, module in (("encoder.conv1", model.model.encoder.conv1), ("encoder.conv2", model.model.encoder.conv2)):
            w = (module.dequantized_weight().reshape(module.out_channels, module.in_channels, -1) if _is_packed(module)
                 else module.weight.detach())
            if _is_packed(module) and _has_transform(module):
                raise GgmlExportError(f"{name}: a convolution with input transforms cannot be exported to whisper.cpp")
            tensor(name + ".weight", w.float().cpu().numpy(), F16)  # whisper.cpp's convolutions are f16
            tensor(name + ".bias", module.bias.detach().float().cpu().numpy().reshape(-1, 1), F32)
        skip = {n for n, m in model.named_modules() if _is_packed(m) or m is model.model.decoder.embed_tokens}
        for hf_name, module in model.named_modules():
            if hf_name in skip or hf_name.startswith(("model.encoder.conv", "proj_out")):
                continue
            if isinstance(module, nn.LayerNorm):
                base = ggml_module_name(hf_name)
                tensor(base + ".weight", module.weight.detach().float().cpu().numpy(), F32)
                tensor(base + ".bias", module.bias.detach().float().cpu().numpy(), F32)
            elif isinstance(module, nn.Embedding) and "embed_positions" in hf_name:
                tensor(ggml_module_name(hf_name), module.weight.detach().float().cpu().numpy(), F32)
        for name, module in matrices.items():  # biases of the weight matrices (keys have none in whisper.cpp)
            base = name[: -len(".weight")]
            if name == "decoder.token_embedding.weight":
                if _is_packed(module) and module.bias is not None and bool(module.bias.abs().max() > 0):
                    raise GgmlExportError("proj_out has a bias whisper.cpp cannot store")
                continue
            bias = folded.get(base + ".bias")
            if bias is None and module.bias is not None:
                bias = module.bias.detach().float().cpu().numpy()
            if base.endswith(".key"):
                if bias is not None and np.abs(bias).max() > 0:
                    raise GgmlExportError(f"{base}: whisper.cpp's attention keys have no bias, and this one is "
                                          f"not zero (an input shift folded into it?)")
                continue
            if bias is None:
                raise GgmlExportError(f"{base}: whisper.cpp expects a bias here")
            tensor(base + ".bias", bias, F32)
    tmp.replace(out)
    report.bytes = out.stat().st_size
    return report


# -- reading back ----------------------------------------------------------------------------------
HPARAMS = ("n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer", "n_text_ctx", "n_text_state",
           "n_text_head", "n_text_layer", "n_mels", "ftype")


def read_ggml(path: str | Path) -> dict:
    """Parse a whisper.cpp model file: hparams, mel filter shape, vocabulary, and each tensor's
    (ggml type, shape in torch order, data bytes). whisper.cpp itself only logs a bad file, so
    this is how a written file is checked."""
    raw = Path(path).read_bytes()
    magic, = struct.unpack_from("<I", raw, 0)
    if magic != MAGIC:
        raise GgmlExportError(f"{path}: not a ggml file (magic {magic:#x})")
    hp = dict(zip(HPARAMS, struct.unpack_from("<11i", raw, 4)))
    pos = 48
    n_mel, n_fft = struct.unpack_from("<2i", raw, pos)
    pos += 8 + 4 * n_mel * n_fft
    n_vocab, = struct.unpack_from("<i", raw, pos)
    pos += 4
    vocab = []
    for _ in range(n_vocab):
        n, = struct.unpack_from("<i", raw, pos)
        vocab.append(raw[pos + 4:pos + 4 + n])
        pos += 4 + n
    sizes = {F32: (1, 4), F16: (1, 2), **{t[0]: (BLOCK, t[4]) for t in TYPES.values()}}
    tensors = {}
    while pos < len(raw):
        n_dims, length, ttype = struct.unpack_from("<3i", raw, pos)
        pos += 12
        ne = struct.unpack_from(f"<{n_dims}i", raw, pos)
        pos += 4 * n_dims
        name = raw[pos:pos + length].decode()
        pos += length
        per, size = sizes[ttype]
        nbytes = int(np.prod(ne)) // per * size
        tensors[name] = (ttype, tuple(reversed(ne)), raw[pos:pos + nbytes])
        pos += nbytes
    if pos != len(raw):
        raise GgmlExportError(f"{path}: truncated (the last tensor runs past the end of the file)")
    return {"hparams": hp, "filters": (n_mel, n_fft), "vocab": vocab, "tensors": tensors}


def expected_tensors(hp: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (kind: "w" header type / "f16" / "f32", torch-order shape), as whisper.cpp's loader
    creates them (src/whisper.cpp, whisper_model_load)."""
    d, n_vocab = hp["n_audio_state"], hp["n_vocab"]
    out = {"encoder.positional_embedding": ("f32", (hp["n_audio_ctx"], d)),
           "encoder.conv1.weight": ("f16", (d, hp["n_mels"], 3)), "encoder.conv1.bias": ("f32", (d, 1)),
           "encoder.conv2.weight": ("f16", (d, d, 3)), "encoder.conv2.bias": ("f32", (d, 1)),
           "encoder.ln_post.weight": ("f32", (d,)), "encoder.ln_post.bias": ("f32", (d,)),
           "decoder.positional_embedding": ("f32", (hp["n_text_ctx"], d)),
           "decoder.token_embedding.weight": ("w", (n_vocab, d)),
           "decoder.ln.weight": ("f32", (d,)), "decoder.ln.bias": ("f32", (d,))}
    for side, n_layers, attns in (("encoder", hp["n_audio_layer"], ("attn",)), ("decoder", hp["n_text_layer"], ("attn", "cross_attn"))):
        for i in range(n_layers):
            b = f"{side}.blocks.{i}."
            out.update({b + "mlp_ln.weight": ("f32", (d,)), b + "mlp_ln.bias": ("f32", (d,)),
                        b + "mlp.0.weight": ("w", (4 * d, d)), b + "mlp.0.bias": ("f32", (4 * d,)),
                        b + "mlp.2.weight": ("w", (d, 4 * d)), b + "mlp.2.bias": ("f32", (d,))})
            for a in attns:
                out.update({b + f"{a}_ln.weight": ("f32", (d,)), b + f"{a}_ln.bias": ("f32", (d,)),
                            b + f"{a}.key.weight": ("w", (d, d))})
                for part in ("query", "value", "out"):
                    out.update({b + f"{a}.{part}.weight": ("w", (d, d)), b + f"{a}.{part}.bias": ("f32", (d,))})
    return out
