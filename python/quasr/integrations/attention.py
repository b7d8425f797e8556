"""Encoder self-attention on quasr's bf16 CPU kernel (`quasr::attention`, csrc/cpu/attention.h) for
transformers models, through transformers' public attention interface.

A quantized Whisper encoder spent half its time in torch's float32 attention (1500 x 1500 scores per
head; bench/RESULTS.md, issue 22). `enable(model)` points the model's attention modules at
`quasr_attention`, which runs the kernel where it applies (CPU, float32, no mask, not causal, no
dropout, as many key as query heads, no gradient, at least `MIN_QUERIES` query rows: in practice the
encoder's self-attention) and transformers' SDPA function everywhere else (the decoder's causal,
masked and cached attention), with SDPA's masks.

The kernel rounds q * scale, k, v and the softmax weights to bf16 and sums in float32 (about 2.5e-3
relative error on Whisper-sized heads); bench/RESULTS.md has its effect on WER. It runs only on CPUs
with AVX-512 BF16. On CPUs with AMX-BF16 the same bf16 attention runs as torch's SDPA on bf16
operands instead (oneDNN's tile multiplies; about 3.8e-3 relative error), which is faster there
(`bf16_engine`). The default ("auto") takes bf16 attention only where it was measured faster than
torch's float32 SDPA (`auto_uses_bf16`): torch's bf16 SDPA on AMX-BF16 CPUs (an Intel Xeon: 0.42-0.48x
float32 SDPA's time on Whisper's heads), quasr's kernel on AMD CPUs with AVX-512 BF16 (an EPYC:
0.38-0.44x). Elsewhere it keeps float32 SDPA; `QUASR_ATTENTION=bf16` forces bf16 wherever there is an
engine for it. `QUASR_ATTENTION=exact` (or `enable(model, "exact")`) keeps torch's attention;
`bf16-cross` also runs the lean Whisper decoder's cross-attention on quasr's kernel (keys and values
packed once per clip) — opt-in: on whisper-base it cost one early stop in 100 unseen clips
(bench/RESULTS.md)."""

from __future__ import annotations

import functools
import os

import torch

NAME = "quasr"
ENV = "QUASR_ATTENTION"
MODES = ("auto", "bf16", "bf16-cross", "exact")
MIN_QUERIES = 64  # below this the rows are a decoder step's, where SDPA's fixed cost is smaller


def kernel_available() -> bool:
    """Whether this process runs the bf16 attention kernel (the CPU extension is built and the CPU has
    AVX-512 BF16)."""
    from ..kernels.registry import BACKENDS

    cpu = BACKENDS["cpu"]
    return cpu.available() and cpu.has_bf16_attention()


# CPU vendors without AMX on which quasr's kernel was measured faster than torch's float32 SDPA at
# Whisper's encoder heads (bench/attention.py, bench/RESULTS.md); on an Intel Xeon it was slower (1.14-1.29x),
# so "auto" keeps float32 SDPA on other vendors' CPUs without AMX until someone measures them.
KERNEL_FASTER_ON_VENDORS = ("AuthenticAMD",)


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    vendor, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = frozenset(value.split())
                if vendor and flags:
                    break
    except OSError:
        pass
    return vendor, flags


def cpu_vendor() -> str:
    """The CPU's vendor as Linux reports it ("AuthenticAMD", "GenuineIntel"), "" where unknown."""
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them ("amx_bf16", ...), empty where unknown."""
    return _cpuinfo()[1]


def bf16_engine() -> str | None:
    """What runs bf16 attention here: "sdpa-bf16" (torch's SDPA on bf16 operands) on CPUs with AMX-BF16,
    where oneDNN's tile multiplies make it the fastest; "kernel" (quasr::attention) where quasr's
    kernel is available; None where neither is."""
    if "amx_bf16" in cpu_flags():
        return "sdpa-bf16"
    return "kernel" if kernel_available() else None


def auto_uses_bf16() -> bool:
    """Whether "auto" routes the encoder's attention to bf16 here: where it was measured faster than
    float32 SDPA (torch's bf16 SDPA on AMX-BF16 CPUs; quasr's kernel on KERNEL_FASTER_ON_VENDORS)."""
    engine = bf16_engine()
    return engine == "sdpa-bf16" or (engine == "kernel" and cpu_vendor() in KERNEL_FASTER_ON_VENDORS)


def _applies(module, query, key, value, attention_mask, dropout, is_causal, kwargs) -> bool:
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    return (attention_mask is None and not causal and not dropout and query.device.type == "cpu"
            and query.dtype == torch.float32 and query.dim() == 4 and query.shape[2] >= MIN_QUERIES
            and key.shape[1] == query.shape[1] and kwargs.get("position_bias") is None
            and kwargs.get("softcap") is None and not kwargs.get("output_attentions", False)
            and not (torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)))


def quasr_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' attention-function signature: ([B, Tq, H, D] output, None)."""
    if _applies(module, query, key, value, attention_mask, dropout, is_causal, kwargs):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        if bf16_engine() == "sdpa-bf16":
            out = torch.nn.functional.scaled_dot_product_attention(
                query.bfloat16(), key.bfloat16(), value.bfloat16(), scale=float(scale)).float()
            return out.transpose(1, 2), None
        return torch.ops.quasr.attention(query, key, value, float(scale), 0).transpose(1, 2), None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def packs_cross_attention(model, encoder_states: torch.Tensor) -> bool:
    """Whether a decoder loop should run `model`'s cross-attention on quasr's kernel with keys and values
    packed once (quasr_cpu::attention_pack / attention_packed): the model was enabled in `bf16-cross`
    mode, routes its attention here, and the encoder states are float32 on the CPU, with no gradient
    wanted."""
    return (getattr(model, "quasr_attention_mode", None) == "bf16-cross"
            and getattr(getattr(model, "config", None), "_attn_implementation", None) == NAME
            and encoder_states.device.type == "cpu" and encoder_states.dtype == torch.float32
            and not (torch.is_grad_enabled() and encoder_states.requires_grad) and kernel_available())


_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

        AttentionInterface.register(NAME, quasr_attention)
        AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])  # SDPA's masks for SDPA's calls
        _registered = True


def mode_from_env() -> str:
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected one of {', '.join(MODES)} (auto: bf16 attention "
                         "where it was measured faster than torch's float32; bf16: wherever the CPU has AVX-512 "
                         "BF16 or AMX-BF16; exact: torch's float32 attention)")
    return mode


def enable(model, mode: str | None = None) -> str:
    """Route `model`'s attention through `quasr_attention` per `mode` (default: QUASR_ATTENTION, else
    "auto"). auto: where bf16 attention was measured faster than SDPA on this CPU (`auto_uses_bf16`)
    and the model uses SDPA; bf16: wherever there is a bf16 engine (`bf16_engine`), an error where
    there is none; bf16-cross: bf16, and the lean Whisper decoder's cross-attention on quasr's kernel
    too; exact: back to SDPA. Returns what the model uses now ("quasr" or its
    transformers attention implementation)."""
    mode = mode_from_env() if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"attention mode {mode!r}: expected one of {', '.join(MODES)}")
    if hasattr(model, "set_attn_implementation"):
        model.quasr_attention_mode = mode  # read by packs_cross_attention
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if not hasattr(model, "set_attn_implementation") or current is None:
        if mode in ("bf16", "bf16-cross"):
            raise ValueError(f"{type(model).__name__} is not a transformers model with a settable attention "
                             "implementation; the bf16 attention kernel cannot be routed into it")
        return str(current)
    if mode == "exact":
        if current == NAME:
            model.set_attn_implementation(current := "sdpa")
        return current
    if bf16_engine() is None:
        if mode in ("bf16", "bf16-cross"):
            raise RuntimeError("bf16 attention needs quasr's CPU extension and a CPU with AVX-512 BF16 (or one with "
                               f"AMX-BF16); this one has neither (set {ENV}=exact or auto)")
        return current
    if mode == "auto" and not auto_uses_bf16():  # not faster than SDPA on this CPU: torch's, as exact does
        if current == NAME:
            model.set_attn_implementation(current := "sdpa")
        return current
    if current not in ("sdpa", NAME):
        return current  # eager or flash attention chosen on purpose: leave it
    _register()
    if current != NAME:
        model.set_attn_implementation(NAME)
    return NAME
