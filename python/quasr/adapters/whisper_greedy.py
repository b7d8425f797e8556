"""A lean greedy decoder for Whisper: the tokens of transformers' `generate` (greedy, no timestamps),
with a static self-attention cache, the cross-attention keys and values projected once per clip,
and no per-step cache objects, masks or output records. At batch 1 transformers' generate spends
about as much time per token in Python and small tensor ops as whisper-tiny's quantized decoder
spends in its matmuls (bench/RESULTS.md, issue 22).

It calls the model's own modules (the layers of a `WhisperForConditionalGeneration`, float or
quantized), so the kernels the modules choose still run. Where a generation setting asks for more
than greedy decoding without timestamps, `supports` says no and the caller uses `generate`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

from ..integrations import attention


def supports(model) -> str | None:
    """None if the lean loop decodes this model as `generate` would; else why not."""
    gc = model.generation_config
    if (getattr(gc, "num_beams", 1) or 1) > 1 or getattr(gc, "do_sample", False):
        return "beam search or sampling is configured"
    if getattr(gc, "return_timestamps", False):
        return "timestamps are requested"
    layers = getattr(getattr(getattr(model, "model", None), "decoder", None), "layers", None)
    if not hasattr(model, "proj_out") or not layers or not all(hasattr(l, "encoder_attn") for l in layers):
        return "not a Whisper encoder-decoder with transformers' layer structure"
    return None


def language_id(gc, language: str) -> int:
    """A language code, name or token ("en", "english", "<|en|>") to its token id, as generate reads it."""
    lang = language.lower()
    token = (lang if lang in gc.lang_to_id else f"<|{TO_LANGUAGE_CODE[lang]}|>" if lang in TO_LANGUAGE_CODE
             else f"<|{lang}|>")
    if token not in gc.lang_to_id:
        raise ValueError(f"language {language!r} is not one this Whisper model knows (its generation config "
                         f"lists {len(gc.lang_to_id)}: {', '.join(sorted(gc.lang_to_id)[:8])}, ...)")
    return gc.lang_to_id[token]


def prompt_ids(model, encoder_states: torch.Tensor, language: str | None, task: str | None) -> torch.Tensor:
    """(B, P) decoder prompt that `generate` builds: the start token, then the language (given, or
    detected per clip where the model is multilingual and none is given) and task for multilingual
    models, then <|notimestamps|>; legacy `forced_decoder_ids` fill in what is not given."""
    gc, b = model.generation_config, encoder_states.shape[0]
    init = [gc.decoder_start_token_id]
    forced = getattr(gc, "forced_decoder_ids", None) or getattr(model.config, "forced_decoder_ids", None)
    if language is None and task is None and forced:
        for pos, (i, tok) in enumerate(forced, start=1):
            if i != pos:
                raise ValueError(f"forced_decoder_ids {forced} do not follow Whisper's prompt pattern")
            init.append(tok)
    rows = [list(init) for _ in range(b)]
    lang_ids = None
    if language is not None:
        lang_ids = [language_id(gc, language)] * b
    elif hasattr(gc, "lang_to_id") and (len(init) <= 1 or init[1] is None):
        lang_ids = model.detect_language(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states),
                                         generation_config=gc).tolist()
    if lang_ids is not None:
        for row, lid in zip(rows, lang_ids):
            if len(row) > 1:
                row[1] = lid
            else:
                row.append(lid)
    task_ids = getattr(gc, "task_to_id", None) or {}
    for row in rows:
        if task is not None:
            tid = task_ids[task]
            if any(t in row for t in task_ids.values()):
                row[:] = [tid if t in task_ids.values() else t for t in row]
            else:
                row.append(tid)
        elif language is not None and task_ids and not any(t in row for t in task_ids.values()):
            row.append(task_ids["transcribe"])
        nts = getattr(gc, "no_timestamps_token_id", None)
        if nts is not None and row[-1] != nts:
            row.append(nts)
    if any(t is None for row in rows for t in row):
        raise ValueError(f"incomplete Whisper decoder prompt {rows[0]}: set the language")
    return torch.tensor(rows, dtype=torch.long, device=encoder_states.device)


class WhisperGreedy:
    """Greedy decoding of a Whisper model from encoder states. Build once per model, call per batch."""

    def __init__(self, model):
        self.model = model
        self.decoder = model.model.decoder
        cfg = model.config
        self.heads = cfg.decoder_attention_heads
        self.head_dim = cfg.d_model // self.heads
        self.max_positions = cfg.max_target_positions

    def _heads(self, y: torch.Tensor) -> torch.Tensor:
        """(B, T, H*D) -> (B, H, T, D)."""
        b, t, _ = y.shape
        return y.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    @torch.no_grad()  # not inference_mode: calibration feeds these ids to passes that backpropagate
    def __call__(self, encoder_states: torch.Tensor, prompt: torch.Tensor, max_new_tokens: int,
                 suppress=None) -> torch.Tensor:
        """Token ids (B, P + generated), prompt included, as greedy `generate` makes them before
        Whisper strips the prompt: a row that has ended is filled with the pad token until every row
        has ended or the budget is spent. `suppress(ids, scores)` is the logits processor.

        A row that has ended leaves the batch (its caches are dropped), so the rows still running
        are all that is computed: generate keeps computing ended rows until the last one ends, and
        at batch 8 one clip that runs long (or loops to the token cap) made all 8 run as long."""
        gc, dec = self.model.generation_config, self.decoder
        eos = gc.eos_token_id
        pad = gc.pad_token_id if gc.pad_token_id is not None else eos
        b, p = prompt.shape
        total = min(p + max_new_tokens, self.max_positions)
        dtype, device = encoder_states.dtype, encoder_states.device
        cross = [None] * len(dec.layers)  # projected at the first step, in generate's module order
        # Where the model runs quasr's bf16 attention, the cross-attention keys and values are packed for
        # it once per clip and read at every step (integrations/attention.py).
        packed = attention.packs_cross_attention(self.model, encoder_states)
        shape = (b, self.heads, total, self.head_dim)
        keys = [torch.empty(shape, dtype=dtype, device=device) for _ in dec.layers]
        values = [torch.empty(shape, dtype=dtype, device=device) for _ in dec.layers]
        cross_kv = [None] * len(dec.layers)  # unpacked, kept to repack when rows leave
        positions = dec.embed_positions.weight
        ids, step_ids, start = prompt, prompt, 0
        active = torch.arange(b, device=device)  # rows of the full batch still decoding
        while ids.shape[1] < total:
            n = step_ids.shape[1]
            end = start + n
            h = dec.embed_tokens(step_ids) + positions[start:end].to(dtype)
            for i, layer in enumerate(dec.layers):
                sa, ca = layer.self_attn, layer.encoder_attn
                x = layer.self_attn_layer_norm(h)
                q = self._heads(sa.q_proj(x) * sa.scaling)  # scaled before the product, as transformers does
                keys[i][:, :, start:end] = self._heads(sa.k_proj(x))
                values[i][:, :, start:end] = self._heads(sa.v_proj(x))
                a = F.scaled_dot_product_attention(q, keys[i][:, :, :end], values[i][:, :, :end],
                                                   is_causal=n > 1, scale=1.0)
                h = h + sa.out_proj(a.transpose(1, 2).reshape(b, n, -1))
                q = self._heads(ca.q_proj(layer.encoder_attn_layer_norm(h)) * ca.scaling)
                if cross[i] is None:
                    cross_kv[i] = (self._heads(ca.k_proj(encoder_states)).contiguous(),
                                   self._heads(ca.v_proj(encoder_states)).contiguous())
                    cross[i] = torch.ops.quasr_cpu.attention_pack(*cross_kv[i]) if packed else cross_kv[i]
                a = (torch.ops.quasr_cpu.attention_packed(q, cross[i], encoder_states.shape[1], 1.0) if packed
                     else F.scaled_dot_product_attention(q, *cross[i], scale=1.0))
                h = h + ca.out_proj(a.transpose(1, 2).reshape(b, n, -1))
                h = h + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(h))))
            scores = self.model.proj_out(dec.layer_norm(h[:, -1:]))[:, 0].float()
            if suppress is not None:
                scores = suppress(ids if ids.shape[0] == b else ids.index_select(0, active), scores)  # its rows
            nxt = scores.argmax(-1)
            full = torch.full((ids.shape[0], 1), pad, dtype=ids.dtype, device=device)
            full[active, 0] = nxt
            ids = torch.cat([ids, full], 1)
            start, step_ids = end, nxt[:, None]
            ended = nxt == eos
            if bool(ended.all()):
                break
            if bool(ended.any()):  # drop the rows that ended from every cache
                keep = (~ended).nonzero()[:, 0]
                active, step_ids, b = active[keep], step_ids[keep], int(keep.numel())
                keys = [k.index_select(0, keep) for k in keys]
                values = [v.index_select(0, keep) for v in values]
                for i, kv in enumerate(cross_kv):
                    if kv is not None:
                        cross_kv[i] = (kv[0].index_select(0, keep), kv[1].index_select(0, keep))
                        cross[i] = torch.ops.quasr_cpu.attention_pack(*cross_kv[i]) if packed else cross_kv[i]
        return ids
