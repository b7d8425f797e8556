"""EfficiencyCounter (docs/METRICS.md): MACs, BOPs and bytes counted per layer call, by hand."""

import pytest
import torch
from torch import nn

from quasr.metrics import EfficiencyCounter
from quasr.plan import swap, uniform_plan
from quasr.rotation import rotation_factors


def _packed(module: nn.Module, bits=4, act_bits=None, rotate=False) -> nn.Module:
    model = nn.Sequential(module)
    plan = uniform_plan(model, bits, 32)
    swap(model, plan)
    q = model[0]
    q.set_transforms(rotate=rotate, act={"act_bits": act_bits} if act_bits else None)
    return model


@pytest.mark.parametrize("rotate", [False, True, "learned"])
@pytest.mark.parametrize("act_bits", [None, 8])
def test_linear_counts(rotate, act_bits):
    k, n, rows = 64, 48, 10
    model = _packed(nn.Linear(k, n), 4, act_bits, rotate)
    with torch.no_grad(), EfficiencyCounter(model) as c:
        model(torch.randn(2, 5, k))
    ab = act_bits or 16
    rot = rows * k * sum(rotation_factors(k)) if rotate else 0
    assert c.counts.macs == rows * k * n + rot and c.counts.rotation_macs == rot
    rot_bops = rot * (256 if rotate == "learned" else 16)  # Hadamard entries are 1-bit (+-1)
    assert c.counts.rotation_bops == rot_bops
    assert c.counts.bops == rows * k * n * 4 * ab + rot_bops
    act = rows * k * ab / 8 + rows * n * 2 + (2 * rows * k * 2 if rotate else 0)
    assert c.counts.act_bytes == act
    q = model[0]
    stored = q.packed.numel() + q.scales.numel() * 2 + q.zeros.numel() * 2 + q.bias.numel() * 4 + (k if rotate else 0)
    if rotate == "learned":  # the fp32 factors [a, a] and [b, b] are read too
        stored += 4 * sum(f * f for f in rotation_factors(k))
    assert c.counts.weight_bytes == stored


@pytest.mark.parametrize("rotate", [False, True])
def test_grouped_conv_counts_every_group(rotate):
    cin, cout, kernel, groups, t = 32, 16, 4, 4, 20
    model = _packed(nn.Conv1d(cin, cout, kernel, padding=2, groups=groups), 4, 8, rotate)
    with torch.no_grad(), EfficiencyCounter(model) as c:
        y = model(torch.randn(3, cin, t))
    rows = y.shape[0] * y.shape[-1]  # per group
    k = cin // groups * kernel
    rot = groups * rows * k * sum(rotation_factors(k)) if rotate else 0
    assert c.counts.macs == rows * k * cout + rot  # each output channel sees K inputs of its group
    assert c.counts.act_bytes == groups * rows * k + rows * cout * 2 + (2 * groups * rows * k * 2 if rotate else 0)
