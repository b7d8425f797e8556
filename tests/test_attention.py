"""quasr::attention (csrc/cpu/attention.h): the AVX-512 BF16 path and the portable path against the
plain-torch reference of the same math, on random shapes; the transformers routing
(integrations/attention.py) on the three families' small configs."""

import platform
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import FAMILIES, tiny_family
from quasr.integrations import attention
from quasr.kernels import reference
from quasr.kernels.registry import BACKENDS

CPU = BACKENDS["cpu"]
needs_cpu = pytest.mark.skipif(not CPU.available(), reason="native CPU extension not built")

# The CPUs the engine choice is made for: (vendor, flags) as /proc/cpuinfo gives them.
CPUS = {"amd-avx512-bf16": ("AuthenticAMD", frozenset()), "intel-amx": ("GenuineIntel", frozenset({"amx_bf16"})),
        "intel-no-amx": ("GenuineIntel", frozenset())}


def _pretend(monkeypatch, cpu: str) -> None:
    vendor, flags = CPUS[cpu]
    monkeypatch.setattr(attention, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(attention, "cpu_flags", lambda: flags)


PATHS = [pytest.param(1, id="avx512-bf16", marks=pytest.mark.skipif(not CPU.has_bf16_attention(),
                                                                     reason="this CPU has no AVX-512 BF16")),
         pytest.param(2, id="portable")]
# (B, H, Tq, Tk, D): tails of every block (4 query rows, 16 and 64 keys, 16 and 64 dims), odd D, one key
SHAPES = [(1, 1, 1, 1, 1), (1, 2, 5, 7, 64), (2, 3, 17, 33, 52), (1, 2, 37, 61, 80), (1, 1, 9, 130, 3),
          (2, 2, 64, 200, 128), (1, 1, 4, 64, 16), (1, 3, 70, 1500 // 8, 64)]


def _qkv(shape, seed=0, strided=False):
    b, h, tq, tk, d = shape
    g = torch.Generator().manual_seed(seed)
    if strided:  # transformers' [B, T, H, D] projections viewed as [B, H, T, D]
        return tuple(torch.randn(b, t, h, d, generator=g).transpose(1, 2) for t in (tq, tk, tk))
    return tuple(torch.randn(b, h, t, d, generator=g) for t in (tq, tk, tk))


@needs_cpu
@pytest.mark.parametrize("kernel", PATHS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_reference(shape, kernel):
    q, k, v = _qkv(shape, strided=shape[1] > 1)
    scale = shape[-1] ** -0.5
    out = torch.ops.quasr.attention(q, k, v, scale, kernel)
    ref = reference.attention_bf16(q, k, v, scale)
    assert out.shape == ref.shape and out.dtype == torch.float32
    # The same bf16 roundings; only the order of the float32 sums (and, rarely, one weight's bf16
    # rounding at a tie) differs.
    assert (out - ref).abs().max() <= 1e-4 * v.abs().max()
    exact = F.scaled_dot_product_attention(q, k, v, scale=scale)
    assert (out - exact).abs().max() <= 2e-2 * v.abs().max()  # bf16 operands, not an exact kernel


@needs_cpu
def test_paths_agree_on_whisper_sized_head():
    if not CPU.has_bf16_attention():
        pytest.skip("this CPU has no AVX-512 BF16")
    q, k, v = _qkv((1, 2, 300, 1500, 64), seed=3, strided=True)
    simd = torch.ops.quasr.attention(q, k, v, 0.125, 1)
    assert torch.equal(simd, torch.ops.quasr.attention(q, k, v, 0.125, 0))  # auto picks the SIMD path here
    assert (simd - torch.ops.quasr.attention(q, k, v, 0.125, 2)).abs().max() <= 1e-4 * v.abs().max()
    exact = F.scaled_dot_product_attention(q, k, v, scale=0.125)
    assert ((simd - exact).norm() / exact.norm()) < 1e-2


@needs_cpu
def test_kernel_rejects_bad_input():
    q, k, v = _qkv((1, 2, 4, 8, 16))
    with pytest.raises(RuntimeError, match="grouped-query"):
        torch.ops.quasr.attention(q, k[:, :1], v[:, :1], 0.25, 0)
    with pytest.raises(RuntimeError, match="same shape"):
        torch.ops.quasr.attention(q, k, v[:, :, :4], 0.25, 0)
    with pytest.raises(RuntimeError, match=r"\[B, H, T, D\]"):
        torch.ops.quasr.attention(q[0], k[0], v[0], 0.25, 0)
    with pytest.raises(RuntimeError, match="kernel must be"):
        torch.ops.quasr.attention(q, k, v, 0.25, 5)
    if not CPU.has_bf16_attention():
        with pytest.raises(RuntimeError, match="AVX-512 BF16"):
            torch.ops.quasr.attention(q, k, v, 0.25, 1)


def test_reference_is_attention():
    """The reference without its roundings is softmax attention (it cannot drift from what it models)."""
    q, k, v = _qkv((1, 2, 9, 30, 8), seed=5)
    ref = reference.attention_bf16(q, k, v, 0.3)
    assert torch.allclose(ref, F.scaled_dot_product_attention(q, k, v, scale=0.3), atol=2e-2)


class _Module(torch.nn.Module):
    is_causal = False


@pytest.mark.parametrize("case", ["mask", "causal", "short", "grad", "dropout"])
def test_routing_falls_back_to_sdpa(case):
    """Anything but unmasked, non-causal, gradient-free attention over enough rows is SDPA's, bit for bit."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = _qkv((1, 2, 8 if case == "short" else attention.MIN_QUERIES, 70, 16), seed=1)
    module, mask, kw = _Module(), None, {}
    if case == "mask":
        mask = torch.zeros(1, 1, q.shape[2], 70)
        mask[..., -5:] = float("-inf")
    if case == "causal":
        kw["is_causal"] = True
        k, v = k[:, :, : q.shape[2]], v[:, :, : q.shape[2]]
    if case == "grad":
        q.requires_grad_(True)
    if case == "dropout":
        torch.manual_seed(0)
        kw["dropout"] = 0.5
    out, _ = attention.quasr_attention(module, q, k, v, mask, scaling=0.25, **kw)
    if case == "dropout":
        torch.manual_seed(0)
    want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.25, **kw)
    assert torch.equal(out, want)


@needs_cpu
def test_routing_runs_the_kernel_on_encoder_shapes(monkeypatch):
    _pretend(monkeypatch, "amd-avx512-bf16")  # the kernel is the engine without AMX
    q, k, v = _qkv((2, 2, attention.MIN_QUERIES, 90, 16), seed=2)
    out, _ = attention.quasr_attention(_Module(), q, k, v, None, scaling=0.25)
    assert out.shape == (2, attention.MIN_QUERIES, 2, 16)  # transformers' [B, T, H, D]
    assert torch.equal(out, torch.ops.quasr.attention(q, k, v, 0.25, 0).transpose(1, 2))


@needs_cpu
@pytest.mark.parametrize("cpu", ["amd-avx512-bf16", "intel-amx"])
@pytest.mark.parametrize("family", FAMILIES)
def test_quantized_models_use_it_where_available(family, cpu, monkeypatch):
    from quasr.adapters import get_adapter
    from quasr.methods import quantize
    from quasr.plan import uniform_plan

    monkeypatch.delenv(attention.ENV, raising=False)
    _pretend(monkeypatch, cpu)  # CPUs where auto takes bf16 attention (torch's bf16 SDPA runs on any CPU)
    bf16 = attention.auto_uses_bf16()
    assert bf16 == (cpu == "intel-amx" or CPU.has_bf16_attention())
    model, processor = tiny_family(family)
    assert model.config._attn_implementation == "sdpa"
    x = torch.randn(1, 80, 3000) if family == "whisper" else torch.randn(1, 48000)  # >= MIN_QUERIES frames
    encoder = model.get_encoder() if family != "wav2vec2" else model.wav2vec2
    with torch.no_grad():
        before = encoder(x).last_hidden_state
    quantize(get_adapter(model, processor), uniform_plan(model, 8, 32), None, "rtn", progress=False)
    assert model.config._attn_implementation == (attention.NAME if bf16 else "sdpa")
    with torch.no_grad():
        after = encoder(x).last_hidden_state
        assert attention.enable(model, "exact") == "sdpa" and model.config._attn_implementation == "sdpa"
        exact = encoder(x).last_hidden_state
    # 8-bit weights and (where available) bf16 attention: close to the float encoder, and the bf16
    # attention close to the exact one on the same quantized weights
    assert ((after - before).norm() / before.norm()) < 5e-2
    assert ((after - exact).norm() / exact.norm()) < 2e-2
    assert torch.equal(after, exact) != bf16  # bf16 attention ran where auto takes it


def test_mode_from_env(monkeypatch):
    monkeypatch.setenv(attention.ENV, "fast")
    with pytest.raises(ValueError, match="auto, bf16, bf16-cross, exact"):
        attention.mode_from_env()
    monkeypatch.setenv(attention.ENV, "EXACT")
    assert attention.mode_from_env() == "exact"
    model, _ = tiny_family("whisper")
    assert attention.enable(model) == "sdpa"
    with pytest.raises(ValueError, match="expected one of"):
        attention.enable(model, "fp16")
    if attention.bf16_engine() is None:
        with pytest.raises(RuntimeError, match="AVX-512 BF16"):
            attention.enable(model, "bf16")
    with pytest.raises(ValueError, match="settable attention"):
        attention.enable(torch.nn.Linear(2, 2), "bf16")


@needs_cpu
def test_saved_model_does_not_carry_the_choice(tmp_path, monkeypatch):
    """The attention choice is the runtime's, made again at load on the loading machine."""
    import json

    from quasr.adapters import get_adapter
    from quasr.methods import quantize
    from quasr.plan import uniform_plan
    from quasr.serialize import save_quantized

    monkeypatch.delenv(attention.ENV, raising=False)
    _pretend(monkeypatch, "amd-avx512-bf16")
    model, processor = tiny_family("whisper")
    quantize(get_adapter(model, processor), uniform_plan(model, 4, 32), None, "rtn", progress=False)
    save_quantized(model, processor, tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert attention.NAME not in json.dumps({k: v for k, v in config.items() if "attn" in k})
    from quasr.models import load_model

    loaded, _ = load_model(str(tmp_path / "q"))
    assert loaded.config._attn_implementation == (attention.NAME if CPU.has_bf16_attention() else "sdpa")


@pytest.mark.parametrize("cpu", list(CPUS))
def test_info_names_the_attention(cpu, monkeypatch):
    from quasr.ops import native_status

    if not CPU.available():
        pytest.skip("native CPU extension not built")
    monkeypatch.delenv(attention.ENV, raising=False)
    _pretend(monkeypatch, cpu)
    named = native_status().split("encoder attention")[1]
    if cpu == "intel-amx":
        assert "torch's SDPA on bf16 operands (AMX-BF16" in named
    elif cpu == "amd-avx512-bf16" and CPU.has_bf16_attention():
        assert "avx512-bf16 (bf16" in named
    else:
        assert "float32 SDPA" in named
    monkeypatch.setenv(attention.ENV, "exact")
    assert "float32 SDPA" in native_status().split("encoder attention")[1]


@needs_cpu
def test_auto_takes_bf16_only_where_it_was_measured_faster(monkeypatch):
    """On an Intel Xeon quasr's kernel took 1.14-1.29x float32 SDPA's time and torch's bf16
    SDPA on AMX 0.42-0.48x (bench/RESULTS.md): auto follows, bf16 forces the engine there is, and auto
    afterwards goes back."""
    monkeypatch.delenv(attention.ENV, raising=False)
    model, _ = tiny_family("whisper")
    _pretend(monkeypatch, "intel-no-amx")
    assert attention.bf16_engine() == ("kernel" if CPU.has_bf16_attention() else None)
    assert not attention.auto_uses_bf16()
    assert attention.enable(model) == "sdpa" and model.config._attn_implementation == "sdpa"
    if CPU.has_bf16_attention():
        assert attention.enable(model, "bf16") == attention.NAME  # forced: quasr's kernel
        assert attention.enable(model, "auto") == "sdpa"
    else:
        with pytest.raises(RuntimeError, match="AVX-512 BF16"):
            attention.enable(model, "bf16")
    _pretend(monkeypatch, "intel-amx")
    assert attention.bf16_engine() == "sdpa-bf16" and attention.auto_uses_bf16()
    assert attention.enable(model) == attention.NAME
    _pretend(monkeypatch, "amd-avx512-bf16")
    assert attention.auto_uses_bf16() == CPU.has_bf16_attention()


@pytest.mark.parametrize("shape", [(1, 6, 300, 64), (2, 3, 70, 52)], ids=lambda s: "x".join(map(str, s)))
def test_the_amx_engine_is_bf16_sdpa(shape, monkeypatch):
    """quasr_attention on an AMX-BF16 CPU: torch's SDPA on bf16-rounded q, k, v, as a float32 result in
    transformers' [B, T, H, D] layout, close to float32 SDPA."""
    _pretend(monkeypatch, "intel-amx")
    b, h, t, d = shape
    q, k, v = _qkv((b, h, t, t, d), seed=5, strided=True)
    with torch.no_grad():
        out, _ = attention.quasr_attention(_Module(), q, k, v, None, scaling=0.2)
    want = F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), scale=0.2).float().transpose(1, 2)
    exact = F.scaled_dot_product_attention(q, k, v, scale=0.2).transpose(1, 2)
    assert out.dtype == torch.float32 and out.shape == (b, t, h, d)
    assert torch.equal(out, want)
    assert (out - exact).norm() / exact.norm() < 1e-2


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")),
                    reason="x86 Linux names the vendor and flags in /proc/cpuinfo")
def test_the_cpu_vendor_and_flags_are_read_from_linux():
    assert attention.cpu_vendor() in ("AuthenticAMD", "GenuineIntel", "HygonGenuine", "CentaurHauls")
    assert {"sse2", "fpu"} <= attention.cpu_flags()
    assert ("avx512_bf16" in attention.cpu_flags()) == CPU.has_bf16_attention() or not CPU.available()


@pytest.mark.skipif(not CPU.has_bf16_attention(), reason="this CPU has no AVX-512 BF16")
@pytest.mark.parametrize("shape", [(1, 6, 1, 300, 64), (3, 2, 4, 33, 52), (2, 1, 7, 17, 3)],
                         ids=lambda s: "x".join(map(str, s)))
def test_packed_keys_and_values_are_the_same_computation(shape):
    """A decoder's cross-attention: keys and values packed once, queries of every step against them."""
    q, k, v = _qkv(shape, seed=4)
    pack = torch.ops.quasr_cpu.attention_pack(k, v)
    out = torch.ops.quasr_cpu.attention_packed(q, pack, shape[3], 0.3)
    assert torch.equal(out, torch.ops.quasr.attention(q, k, v, 0.3, 1))
    with pytest.raises(RuntimeError, match="does not hold"):
        torch.ops.quasr_cpu.attention_packed(q, pack, shape[3] + 16, 0.3)


@needs_cpu
def test_lean_whisper_loop_packs_cross_attention_only_when_routed(monkeypatch):
    from quasr.adapters import get_adapter
    from quasr.adapters.whisper_greedy import WhisperGreedy
    from quasr.methods import quantize
    from quasr.plan import uniform_plan

    monkeypatch.delenv(attention.ENV, raising=False)
    model, processor = tiny_family("whisper")
    states = torch.randn(1, 1500, 64)
    assert not attention.packs_cross_attention(model, states)  # float models keep torch's attention
    quantize(get_adapter(model, processor), uniform_plan(model, 8, 32), None, "rtn", progress=False)
    assert not attention.packs_cross_attention(model, states)  # opt-in: the default routes the encoder only
    if CPU.has_bf16_attention():
        attention.enable(model, "bf16-cross")
    assert attention.packs_cross_attention(model, states) == CPU.has_bf16_attention()
    assert not attention.packs_cross_attention(model, states.double())
    prompt = torch.tensor([[1]])
    with torch.no_grad():
        ids = WhisperGreedy(model)(states, prompt, 6)
        attention.enable(model, "exact")
        assert not attention.packs_cross_attention(model, states)
        exact = WhisperGreedy(model)(states, prompt, 6)
    assert ids.shape[0] == 1 and ids[0, 0] == 1 and ids.shape[1] >= 2 and exact.shape[0] == 1
