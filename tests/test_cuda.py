"""The GPU path (--device cuda): packed layers, calibration, sensitivity and mixed precision give the
same results on a CUDA device as on the CPU. Skipped where torch sees no GPU (CI); run on the GPU
machine with `pytest tests/test_cuda.py`."""

import copy

import numpy as np
import pytest
import torch

from conftest import FAMILIES, tiny_family
from quasr.adapters import get_adapter
from quasr.allocation.allocate import SizeModel
from quasr.format import dequantize
from quasr.allocation.mixed import quantize_to_budget
from quasr.plan import model_size_bytes, swap, uniform_plan
from quasr.quantize import rtn_quantize
from quasr.allocation.sensitivity import collect_statistics, error_table, fisher_diagonal

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.filterwarnings("ignore")]


def _waves(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.1, int(16000 * (0.8 + 0.3 * i))).astype(np.float32) for i in range(n)]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_dequantize_on_cuda_matches_cpu(bits):
    w = torch.randn(96, 200, generator=torch.Generator().manual_seed(bits))
    pw = rtn_quantize(w, bits, 64)
    on_gpu = type(pw)(pw.packed.cuda(), pw.scales.cuda(), pw.zeros.cuda(), pw.bits, pw.group_size, pw.in_features)
    out = dequantize(on_gpu)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), dequantize(pw), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_model_on_cuda_matches_cpu(family, tmp_path):
    model, processor = tiny_family(family, tmp_path)
    swap(model, uniform_plan(model, 4, 32), progress=False)
    adapter_cpu = get_adapter(model, processor)
    batch = adapter_cpu.calibration_batches(_waves(2), batch_size=2)[0]
    with torch.inference_mode():
        ref = adapter_cpu.forward_logits(batch)
    gpu = copy.deepcopy(model).cuda()
    adapter_gpu = get_adapter(gpu, processor)
    assert all(b.device.type == "cuda" for b in gpu.buffers())
    inputs = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.inputs.items()}
    with torch.inference_mode():
        out = gpu(**inputs).logits
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-3, atol=1e-3)
    assert adapter_gpu.transcribe(_waves(2)) == adapter_cpu.transcribe(_waves(2))


@pytest.mark.parametrize("family", FAMILIES)
def test_sensitivity_and_budgeted_quantization_on_cuda(family, tmp_path):
    model, processor = tiny_family(family, tmp_path)
    waves = _waves()
    cpu_adapter = get_adapter(model, processor)
    cpu_batches = cpu_adapter.calibration_batches(waves, batch_size=2)
    cpu_stats = collect_statistics(cpu_adapter, cpu_batches)

    gpu = copy.deepcopy(model).cuda()
    adapter = get_adapter(gpu, processor)
    batches = adapter.calibration_batches(waves, batch_size=2)
    stats = collect_statistics(adapter, batches)
    for n, v in stats.score("mean").items():
        assert v == pytest.approx(cpu_stats.score("mean")[n], rel=1e-3), n
    fisher = fisher_diagonal(adapter, batches)
    assert all(f.device.type == "cpu" and torch.isfinite(f).all() for f in fisher.values())
    table = error_table(adapter, batches, "output", stats=stats)
    assert all(np.isfinite(list(row.values())).all() for row in table.values())

    budget_mb = SizeModel(model).budget_for_average_bits(3.5) / 1e6
    res = quantize_to_budget(gpu, processor, budget_mb=budget_mb, calibration=waves, allocation="optimal", batch_size=2)
    assert model_size_bytes(gpu) == res.allocation.size_bytes <= res.allocation.budget_bytes
    assert all(b.device.type == "cuda" for b in gpu.buffers())
    assert adapter.transcribe(waves[:1]) is not None


@pytest.mark.parametrize("clip", ["minmax", "mse", "cosine", "hessian"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_rtn_on_cuda_matches_cpu(bits, clip):
    gen = torch.Generator().manual_seed(bits)
    w = torch.randn(64, 300, generator=gen)
    h = torch.rand(300, generator=gen) if clip == "hessian" else None
    cpu = rtn_quantize(w, bits, 128, clip=clip, importance=h)
    gpu = rtn_quantize(w.cuda(), bits, 128, clip=clip, importance=h)
    assert gpu.packed.device.type == "cuda"
    # the clipping search may pick a different shrink on ties; the shipped weights must agree closely
    same = (gpu.packed.cpu() == cpu.packed).float().mean()
    assert same > 0.99
    torch.testing.assert_close(dequantize(gpu).cpu(), dequantize(cpu), rtol=0, atol=float(cpu.scales.float().max()) * 1.01)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method,options", [("gptq", {}), ("awq", {}), ("smoothquant", {}), ("hqq", {}),
                                            ("omniquant", {"steps": 3}), ("omniquant", {"steps": 3, "objective": "block"}),
                                            ("quarot", {}), ("spinquant", {"steps": 3})])
def test_every_method_quantizes_on_cuda(family, method, options):
    """Each PTQ method runs where the model lives: its trainable factors and statistics on the GPU."""
    from quasr.methods import config_plan, quantize

    model, proc = tiny_family(family)
    model.cuda()
    ad = get_adapter(model, proc)
    batches = ad.calibration_batches(_waves())
    quantize(ad, config_plan(model, "W4A8g32"), batches, method, progress=False, **options)
    with torch.no_grad():
        out = ad.forward_logits(batches[0])
    assert out.device.type == "cuda" and torch.isfinite(out).all()
