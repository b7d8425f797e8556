"""Sensitivity from unlabelled audio, error estimates, calibrated clipping, and the budgeted
mixed-precision pipeline, on small random-init models of every family."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import FAMILIES, tiny_family
from quasr.adapters import get_adapter
from quasr.allocation.allocate import MB, BudgetError, SizeModel
from quasr.format import dequantize
from quasr.allocation.mixed import plot_bits, quantize_to_budget
from quasr.plan import model_size_bytes
from quasr.quantize import fake_quantize, rtn_quantize
from quasr.allocation.sensitivity import (DISTANCES, STATISTICS, collect_statistics, distance_scores, error_table,
                                          fisher_diagonal, sensitivity_scores)

pytestmark = pytest.mark.filterwarnings("ignore")


def _waves(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.1, int(16000 * (0.8 + 0.3 * i))).astype(np.float32) for i in range(n)]


@pytest.fixture(params=FAMILIES)
def family(request, tmp_path):
    model, processor = tiny_family(request.param, tmp_path)
    adapter = get_adapter(model, processor)
    return adapter, adapter.calibration_batches(_waves(), batch_size=2)


def test_hooks_see_every_layer_and_statistics_match_a_direct_computation(family):
    adapter, batches = family
    stats = collect_statistics(adapter, batches)
    assert list(stats.stats) == adapter.layer_order()
    # recompute median/max/var of one layer's outputs directly
    name = adapter.layer_order()[len(adapter.layer_order()) // 2]
    outs = []
    h = adapter.model.get_submodule(name).register_forward_hook(lambda m, a, o: outs.append(o.detach().reshape(-1)))
    with torch.inference_mode():
        for b in batches:
            adapter.forward_logits(b)
    h.remove()
    y = torch.cat(outs)
    assert stats.score("max")[name] == pytest.approx(float(y.abs().max()), rel=1e-6)
    assert stats.score("mean")[name] == pytest.approx(float(y.abs().mean()), rel=1e-4)
    assert stats.score("var")[name] == pytest.approx(float(y.var(unbiased=False)), rel=1e-3)
    if y.numel() <= 8192 * len(outs):  # small enough to be sampled completely
        assert stats.score("median")[name] == pytest.approx(float(y.abs().median()), rel=1e-6)
    for s in STATISTICS:
        scores = stats.score(s)
        assert set(scores) == set(adapter.layer_order()) and all(np.isfinite(list(scores.values())))


def test_input_moments_shape_matches_each_flattened_weight(family):
    adapter, batches = family
    moments = collect_statistics(adapter, batches).input_moments()
    for n in adapter.layer_order():
        m = adapter.model.get_submodule(n)
        k = m.weight[0].numel()
        assert moments[n].shape in ((k,), (m.weight.shape[0], k)), n
        assert (moments[n] >= 0).all()


def test_input_moments_of_a_linear_are_mean_squared_inputs():
    model, processor = tiny_family("whisper")
    adapter = get_adapter(model, processor)
    batches = adapter.calibration_batches(_waves(2), batch_size=2)
    name = "model.encoder.layers.0.fc1"
    xs = []
    h = model.get_submodule(name).register_forward_hook(lambda m, a, o: xs.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    with torch.inference_mode():
        for b in batches:
            adapter.forward_logits(b)
    h.remove()
    x = torch.cat(xs)
    got = collect_statistics(adapter, batches).input_moments()[name]
    torch.testing.assert_close(got, (x * x).mean(0), rtol=1e-5, atol=1e-7)


def test_distance_scores_grow_as_bits_shrink(family):
    adapter, batches = family
    for metric in DISTANCES:
        at2 = distance_scores(adapter, batches, metric, bits=2)
        at8 = distance_scores(adapter, batches, metric, bits=8)
        assert set(at2) == set(adapter.layer_order())
        assert all(v >= -1e-6 for v in at2.values())
        assert sum(at2.values()) > sum(at8.values())


def test_distance_scores_leave_the_model_unchanged():
    model, processor = tiny_family("moonshine")
    adapter = get_adapter(model, processor)
    batches = adapter.calibration_batches(_waves(2), batch_size=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    distance_scores(adapter, batches, "kl", bits=2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_fisher_is_the_mean_squared_gradient_of_the_self_supervised_loss(family):
    adapter, batches = family
    fisher = fisher_diagonal(adapter, batches)
    assert set(fisher) == set(adapter.layer_order())
    name = adapter.layer_order()[-2]  # not Whisper's tied proj_out (its Fisher also counts the embedding use)
    module = adapter.model.get_submodule(name)
    # by hand, one clip at a time, for one layer
    acc, count = torch.zeros_like(fisher[name]), 0
    from quasr.allocation.sensitivity import _single_examples

    for ex in _single_examples(batches):
        w = module.weight.detach().clone().requires_grad_(True)
        original = module.weight
        del module.weight
        module.weight = nn.Parameter(w)
        loss = adapter.self_supervised_loss(ex, adapter.forward_logits(ex))
        (g,) = torch.autograd.grad(loss, module.weight)
        module.weight = original
        acc += g.reshape(acc.shape) ** 2
        count += 1
    torch.testing.assert_close(fisher[name], acc / count, rtol=1e-4, atol=1e-12)
    assert all(not p.requires_grad or p.grad is None for p in adapter.model.parameters())


@pytest.mark.parametrize("method", ["fisher", "output", "kl"])
def test_error_tables_cover_every_layer_and_fall_with_bits(family, method):
    adapter, batches = family
    table = error_table(adapter, batches, method, bits=(2, 4, 8))
    assert set(table) == set(adapter.layer_order())
    for n, row in table.items():
        assert set(row) == {2, 4, 8} and all(np.isfinite(list(row.values())))
    assert sum(r[2] for r in table.values()) > sum(r[4] for r in table.values()) > sum(r[8] for r in table.values())


def test_sensitivity_names_bad_methods():
    model, processor = tiny_family("whisper")
    adapter = get_adapter(model, processor)
    with pytest.raises(ValueError, match="sensitivity must be one of"):
        sensitivity_scores(adapter, [], "entropy")
    with pytest.raises(ValueError, match="error estimate must be one of"):
        error_table(adapter, [], "hawq")


# -- calibrated clipping ------------------------------------------------------------------------

def _weighted_err(w, wq, h):
    return float(((wq - w) ** 2 * h).sum())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_hessian_clipping_minimises_the_weighted_error(bits, symmetric):
    torch.manual_seed(bits)
    w = torch.randn(48, 200) * torch.linspace(0.2, 3, 200)
    h = torch.rand(200) ** 4 * 10  # a few inputs dominate
    common = dict(bits=bits, group_size=64, symmetric=symmetric)
    hess = fake_quantize(w, clip="hessian", importance=h, **common)
    for other in ("mse", "minmax", "cosine"):
        assert _weighted_err(w, hess, h) <= _weighted_err(w, fake_quantize(w, clip=other, **common), h) * (1 + 1e-6)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_cosine_clipping_maximises_group_cosine(bits):
    torch.manual_seed(0)
    w = torch.randn(16, 256) ** 3
    cos = lambda q: torch.nn.functional.cosine_similarity(w.view(16, 2, 128), q.view(16, 2, 128), dim=-1)
    c_cos = cos(fake_quantize(w, bits, 128, clip="cosine"))
    for other in ("mse", "minmax"):
        assert (c_cos >= cos(fake_quantize(w, bits, 128, clip=other)) - 1e-6).all()


def test_hessian_clipping_with_per_row_importance_and_errors():
    w = torch.randn(8, 96)
    h = torch.rand(8, 96)
    pw = rtn_quantize(w, 3, 32, clip="hessian", importance=h)
    assert dequantize(pw).shape == w.shape
    with pytest.raises(ValueError, match="needs the layer's input second moments"):
        rtn_quantize(w, 3, 32, clip="hessian")
    with pytest.raises(ValueError, match="importance must have shape"):
        rtn_quantize(w, 3, 32, clip="hessian", importance=torch.rand(95))
    with pytest.raises(ValueError, match="non-negative"):
        rtn_quantize(w, 3, 32, clip="hessian", importance=-torch.rand(96))


# -- the whole pipeline ---------------------------------------------------------------------------

@pytest.mark.parametrize("allocation,sensitivity,error", [
    ("myqasr", "median", "fisher"), ("optimal", "median", "fisher"), ("optimal", "median", "output"),
    ("uniform", "median", "fisher"), ("reversed", "fisher", "fisher"), ("shuffled", "median", "fisher")])
def test_quantize_to_budget_meets_the_budget_on_every_family(allocation, sensitivity, error, tmp_path):
    for fam in FAMILIES:
        model, processor = tiny_family(fam, tmp_path)
        sm = SizeModel(model)
        budget_mb = sm.budget_for_average_bits(3.6) / MB
        res = quantize_to_budget(model, processor, budget_mb, _waves(3), allocation=allocation,
                                 sensitivity=sensitivity, error=error, batch_size=2)
        size = model_size_bytes(model)
        assert size == res.allocation.size_bytes <= budget_mb * MB
        assert all(2 <= b <= 8 for b in res.allocation.bits.values())
        assert get_adapter(model, processor).transcribe(_waves(1)) is not None
        res.save(tmp_path / "plan.json")
        saved = json.loads((tmp_path / "plan.json").read_text())
        assert saved["plan"] == res.plan and saved["report"]["size_mb"] == pytest.approx(size / MB)
        plot_bits(res, tmp_path / "bits.png")
        assert (tmp_path / "bits.png").stat().st_size > 1000


def test_quantize_to_budget_errors_are_clear():
    model, processor = tiny_family("whisper")
    sm = SizeModel(model)
    with pytest.raises(BudgetError, match="below the smallest this model can be"):
        quantize_to_budget(model, processor, sm.uniform_bytes(2) / MB * 0.9, _waves(2), apply=False)
    with pytest.raises(ValueError, match="needs calibration audio"):
        quantize_to_budget(model, processor, average_bits=4, allocation="myqasr")
    with pytest.raises(ValueError, match="exactly one of budget_mb and average_bits"):
        quantize_to_budget(model, processor, 1.0, average_bits=4, allocation="uniform")
    res = quantize_to_budget(model, processor, average_bits=4, allocation="uniform", apply=False)
    assert res.settings["clip"] == "mse" and set(res.allocation.bits.values()) == {4}


# -- static activation ranges ---------------------------------------------------------------------

from quasr.grid import fake_quant as fake_quant_activation  # noqa: E402
from quasr.ranges import activation_range  # noqa: E402


def _heavy_tailed(n=20000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    x[:3] *= 20  # a few outliers, as in transformer activations
    return x


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_activation_range_searches_beat_minmax_on_outliers(bits, symmetric):
    x = _heavy_tailed()
    err = lambda sz: float(((fake_quant_activation(x, *sz, bits) - x) ** 2).mean())
    cos = lambda sz: float(torch.nn.functional.cosine_similarity(x, fake_quant_activation(x, *sz, bits), dim=0))
    mm = activation_range(x, bits, symmetric, "minmax")
    assert err(activation_range(x, bits, symmetric, "mse")) <= err(mm)
    assert cos(activation_range(x, bits, symmetric, "cosine")) >= cos(mm) - 1e-9
    if bits == 4:  # outliers dominate a coarse grid: clipping them must help clearly
        assert err(activation_range(x, bits, symmetric, "mse")) < 0.5 * err(mm)
    scale, zero = activation_range(x, bits, symmetric, "percentile", percentile=99.9)
    assert scale < mm[0]
    # zero is exactly representable
    assert float(fake_quant_activation(torch.zeros(1), scale, zero, bits)) == 0.0


def test_activation_range_matches_the_observed_range_for_minmax():
    x = torch.tensor([-1.0, 0.5, 3.0])
    scale, zero = activation_range(x, 8, False, "minmax")
    assert scale == pytest.approx(4.0 / 255) and zero == round(1.0 / scale)
    with pytest.raises(ValueError, match="must be one of"):
        activation_range(x, 8, method="kl")
    with pytest.raises(ValueError, match="non-empty and finite"):
        activation_range(torch.tensor([float("nan")]), 8)


def test_all_silent_calibration_audio_is_a_clear_error():
    model, processor = tiny_family("whisper")
    with pytest.raises(ValueError, match="no usable calibration audio"):
        quantize_to_budget(model, processor, average_bits=4, calibration=[np.zeros(16000, np.float32)])
