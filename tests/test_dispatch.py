"""The kernel seam: op schemas that exist whichever backend is built, references behind them, and
the one dispatcher (rule, measured table, environment override, forced context)."""

import json

import pytest
import torch

from quasr import ops
from quasr.kernels import BACKENDS, dispatch, forced, reference
from quasr.kernels.dispatch import choose
from test_kernels import ROTATION_WIDTHS, random_packed


@pytest.fixture
def fresh_dispatch(monkeypatch, tmp_path):
    """A dispatcher reading tables from tmp_path, caches cleared before and after."""
    monkeypatch.setattr(dispatch, "TABLES", tmp_path)
    monkeypatch.delenv("QUASR_KERNEL", raising=False)
    monkeypatch.delenv("QUASR_REFERENCE", raising=False)
    dispatch.load_table.cache_clear()
    dispatch._choose.cache_clear()
    yield tmp_path
    dispatch.load_table.cache_clear()
    dispatch._choose.cache_clear()


def test_ops_are_declared_in_python_with_fake_and_reference_kernels():
    for name in ("qlinear", "dequantize", "rotate"):
        op = getattr(torch.ops.quasr, name).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeExplicitAutograd"), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "Meta"), name


@pytest.mark.parametrize("bits", range(2, 9))
def test_reference_op_matches_the_native_kernel(bits):
    gen = torch.Generator().manual_seed(bits)
    pw = random_packed(37, 200, bits, 64, bits % 2 == 0, gen)
    x, b = torch.randn(5, 200, generator=gen), torch.randn(37, generator=gen)
    args = (x, pw.packed, pw.scales, pw.zeros, b, bits, pw.group_size, pw.in_features)
    want = reference.qlinear_op(*args)
    torch.testing.assert_close(want, ops.reference_qlinear(x, pw, b))
    if ops.NATIVE_CPU:
        torch.testing.assert_close(torch.ops.quasr.qlinear(*args), want, rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(torch.ops.quasr.dequantize(*args[1:4], bits, pw.group_size, pw.in_features),
                                   reference.dequantize_op(*args[1:4], bits, pw.group_size, pw.in_features))


@pytest.mark.skipif(not ops.NATIVE_CPU, reason="native extension not built")
@pytest.mark.parametrize("k", ROTATION_WIDTHS)
def test_reference_rotation_op_matches_the_native_kernel(k):
    from quasr.rotation import Rotation, random_signs

    r = Rotation(random_signs(k, k))
    orders, dense, scale = r.native_factors()
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(k))
    want = reference.rotate_op(x, r.signs, orders, dense, scale)
    torch.testing.assert_close(want, r.reference_apply(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.ops.quasr.rotate(x, r.signs, orders, dense, scale), want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not ops.NATIVE_CPU or not BACKENDS["cpu"].has_avx2(), reason="AVX2 paths not available")
def test_default_rule_by_m(fresh_dispatch):
    assert choose("cpu", 4, 128, 1, 384, 384).path == "gemv"
    assert choose("cpu", 4, 128, 4, 384, 384).path == "gemv"
    assert choose("cpu", 4, 128, 5, 384, 384).path == "gemm"
    assert choose("cpu", 4, 128, 1500, 384, 384).path == "blas"
    assert choose("cpu", 4, 128, 1, 384, 384).source == "default"


def test_other_devices_get_the_reference(fresh_dispatch):
    assert choose("meta", 4, 128, 1, 64, 64).backend == "reference"


@pytest.mark.skipif(not ops.NATIVE_CPU or not BACKENDS["cpu"].has_avx2(), reason="AVX2 paths not available")
def test_a_measured_table_decides_and_unusable_rules_are_skipped(fresh_dispatch):
    table = {"rules": [{"backend": "triton", "path": "gemv", "m": [1, None]},  # not available here
                       {"bits": [3], "m": [1, 8], "backend": "cpu", "path": "scalar"},
                       {"m": [1, 2], "n": [None, 500], "backend": "cpu", "path": "gemm"}]}
    dispatch.table_path(dispatch.machine_kind("cpu")).write_text(json.dumps(table))
    assert choose("cpu", 3, 128, 8, 384, 384).path == "scalar"
    c = choose("cpu", 4, 128, 2, 384, 384)
    assert (c.path, c.source) == ("gemm", "table cpu-avx2.json")
    assert choose("cpu", 4, 128, 2, 1536, 384).source == "default"  # n outside the rule
    assert choose("cpu", 4, 128, 9, 384, 384).path == "gemm"


def test_a_malformed_table_is_named(fresh_dispatch):
    dispatch.table_path(dispatch.machine_kind("cpu")).write_text(json.dumps({"rules": [{"path": "gemv"}]}))
    with pytest.raises(ValueError, match="a dispatch table is"):
        choose("cpu", 4, 128, 1, 64, 64)


def test_environment_and_context_override(fresh_dispatch, monkeypatch):
    monkeypatch.setenv("QUASR_KERNEL", "reference")
    assert choose("cpu", 4, 128, 1, 64, 64) == dispatch.Choice("reference", "dequant-matmul", "env")
    monkeypatch.setenv("QUASR_KERNEL", "tpu")
    with pytest.raises(ValueError, match="unknown kernel backend 'tpu'"):
        choose("cpu", 4, 128, 1, 64, 64)
    monkeypatch.delenv("QUASR_KERNEL")
    with forced("reference"):
        assert choose("cpu", 4, 128, 1, 64, 64).source == "forced"
    if ops.NATIVE_CPU:
        with pytest.raises(ValueError, match="has no path 'warp'"):
            with forced("cpu", "warp"):
                pass


@pytest.mark.skipif(not ops.NATIVE_CPU, reason="native extension not built")
def test_every_backend_matches_the_reference_through_the_dispatcher(fresh_dispatch):
    gen = torch.Generator().manual_seed(3)
    for bits in range(2, 9):
        pw = random_packed(24, 96, bits, 32, False, gen)
        for m in (1, 7, 130):
            x = torch.randn(m, 96, generator=gen)
            want = ops.reference_qlinear(x, pw)
            act = ops.ActQuant(8, True, per_group=True)  # the int8 path runs layers that quantize activations
            want_act = ops.reference_qlinear(x, pw, act=act)
            for name, backend in BACKENDS.items():
                for path in backend.paths:
                    with forced(name, path):
                        if path != "int8":
                            torch.testing.assert_close(ops.qlinear(x, pw), want, rtol=2e-5, atol=2e-5)
                        # int8: s*D - s*z*A in float32 cancels more than the reference's one matmul
                        torch.testing.assert_close(ops.qlinear(x, pw, act=act), want_act, rtol=1e-4, atol=1e-4)


def test_quasr_info_names_backends_and_choices(capsys, tmp_path):
    from conftest import tiny_family
    from quasr.cli import main
    from quasr.plan import swap, uniform_plan
    from quasr.serialize import save_quantized

    model, processor = tiny_family("whisper")
    swap(model, uniform_plan(model, 4, 32), progress=False)
    save_quantized(model, processor, tmp_path / "q")
    assert main(["info", str(tmp_path / "q"), "--m", "1", "1500"]) == 0
    out = capsys.readouterr().out
    assert "backends: cpu (available: " in out and "reference (available: dequant-matmul)" in out
    assert "model.encoder.layers.0.fc1" in out and "M=1500" in out


def test_reference_rotation_names_a_factor_it_cannot_build():
    with pytest.raises(ValueError, match="no Hadamard matrix of that order"):
        reference.rotate(torch.randn(2, 6), None, [6], [None], 1.0)
