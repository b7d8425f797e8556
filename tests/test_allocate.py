"""Bit allocation to a size budget: the size model is exact, allocators never exceed the budget, fill
it within the documented slack, respect 2-8 bits, and are deterministic."""

import itertools
import random

import pytest
import torch
from torch import nn

from conftest import FAMILIES, tiny_family
from quasr.allocation.allocate import (MB, BudgetError, SizeModel, allocate, allocate_optimal, allocate_round_robin,
                                       sensitivity_order)
from quasr.plan import model_size_bytes, swap


class Stack(nn.Module):
    """Linear layers of very different sizes (and a conv), like a real model's mix."""

    def __init__(self, shapes=((64, 96), (256, 128), (32, 512), (512, 512), (128, 40), (300, 64)), conv=True):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(k, n, bias=i % 2 == 0) for i, (n, k) in enumerate(shapes))
        self.conv = nn.Conv1d(16, 48, 5, stride=2) if conv else None
        self.norm = nn.LayerNorm(64)


def _scores(sm, seed=0):
    rng = random.Random(seed)
    return {n: rng.random() for n in sm.names}


@pytest.mark.parametrize("family", FAMILIES)
def test_size_model_is_exact_on_every_family(family, tmp_path):
    model, _ = tiny_family(family, tmp_path)
    sm = SizeModel(model, keep=("*fc2", "*output_dense"))
    assert sm.fixed_bytes > 0 and sm.kept
    rng = random.Random(1)
    bits = {n: rng.randint(2, 8) for n in sm.names}
    predicted = sm.size_bytes(bits)
    swap(model, sm.plan(bits), progress=False)
    assert model_size_bytes(model) == predicted


def test_size_model_counts_a_tied_projection_once():
    model, _ = tiny_family("whisper")
    sm = SizeModel(model)
    assert "proj_out" in sm.names
    float_size = model_size_bytes(model)
    assert sm.size_bytes({n: "keep" for n in sm.names}) == float_size
    swap(model, sm.plan({n: 4 for n in sm.names}), progress=False)
    assert model_size_bytes(model) == sm.uniform_bytes(4)


@pytest.mark.parametrize("method", ["myqasr", "uniform", "shuffled", "reversed", "optimal"])
@pytest.mark.parametrize("avg_bits", [2.0, 2.5, 3.3, 4.0, 5.5, 7.9])
def test_allocations_fit_the_budget_and_respect_2_to_8_bits(method, avg_bits):
    sm = SizeModel(Stack())
    budget = sm.budget_for_average_bits(avg_bits)
    errors = {n: {b: 2.0 ** -b * (i + 1) for b in range(2, 9)} for i, n in enumerate(sm.names)}
    a = allocate(method, sm, budget, scores=_scores(sm), errors=errors)
    assert a.size_bytes == sm.size_bytes(a.bits) <= budget
    assert set(a.bits) == set(sm.names) and all(2 <= b <= 8 for b in a.bits.values())
    again = allocate(method, sm, budget, scores=_scores(sm), errors=errors)
    assert again.bits == a.bits  # deterministic


@pytest.mark.parametrize("avg_bits", [2.3, 3.0, 3.7, 4.5, 6.2])
def test_myqasr_uniformity_constraint_and_slack(avg_bits):
    sm = SizeModel(Stack())
    budget = sm.budget_for_average_bits(avg_bits)
    order = sensitivity_order(_scores(sm), sm.names)
    paper = allocate_round_robin(sm, budget, order, fill=False)
    assert max(paper.bits.values()) - min(paper.bits.values()) <= 1
    # the paper's algorithm stops as soon as it fits: one layer's last one-bit step earlier it did not
    biggest_step = max(sm.layer_bytes(n, b) - sm.layer_bytes(n, b - 1) for n in sm.names for b in range(3, 9))
    assert budget - paper.size_bytes < biggest_step
    # the least sensitive layers lose bits first
    bits_in_order = [paper.bits[n] for n in order]
    assert bits_in_order == sorted(bits_in_order)
    # quasr's default then hands the room back, keeping the constraint: no layer left at the lower
    # width could regain its bit, and only layers the paper had lowered gained one
    a = allocate("myqasr", sm, budget, scores=_scores(sm))
    assert a.size_bytes <= budget and a.size_bytes >= paper.size_bytes
    assert max(a.bits.values()) - min(a.bits.values()) <= 1
    low = min(a.bits.values())
    for n in sm.names:
        assert a.bits[n] - paper.bits[n] in (0, 1)
        if a.bits[n] == low < 8:
            assert a.size_bytes + sm.layer_bytes(n, low + 1) - sm.layer_bytes(n, low) > budget


def test_myqasr_fill_gives_back_a_large_layers_bit():
    # one large layer lowered last (most sensitive) leaves most of its step unused in the paper's
    # algorithm; the fill pass gives it to the smaller layers, most sensitive first
    sm = SizeModel(Stack(shapes=((64, 64), (64, 64), (64, 64), (512, 512)), conv=False))
    order = sm.names  # the big layer is last: most sensitive
    small = sm.layer_bytes(order[0], 6) - sm.layer_bytes(order[0], 5)
    budget = sm.uniform_bytes(6) - 3 * small - 1  # the three small layers' bits are one byte short
    paper = allocate_round_robin(sm, budget, order, fill=False)
    assert [paper.bits[n] for n in order] == [5, 5, 5, 5]  # the big layer's bit paid for all of them
    a = allocate_round_robin(sm, budget, order)
    assert [a.bits[n] for n in order] == [6, 6, 6, 5]
    assert a.size_bytes <= budget and a.size_bytes > paper.size_bytes


def test_myqasr_follows_algorithm_1_step_by_step():
    sm = SizeModel(Stack(conv=False))
    order = sm.names[::-1]
    budget = sm.uniform_bytes(7) - 1  # needs some layers at 6
    a = allocate_round_robin(sm, budget, order, fill=False)
    expected = {n: 7 for n in sm.names}
    size = sm.size_bytes(expected)
    for n in order:  # second round: lower one layer at a time until it fits
        if size <= budget:
            break
        expected[n] = 6
        size = sm.size_bytes(expected)
    assert a.bits == expected


def test_uniform_picks_the_highest_width_that_fits():
    sm = SizeModel(Stack())
    budget = (sm.uniform_bytes(4) + sm.uniform_bytes(5)) // 2
    a = allocate("uniform", sm, budget)
    assert set(a.bits.values()) == {4}
    assert allocate("uniform", sm, sm.uniform_bytes(5)).bits == {n: 5 for n in sm.names}


def test_optimal_matches_brute_force_and_fills_the_budget():
    sm = SizeModel(Stack(shapes=((64, 96), (256, 128), (32, 512), (128, 40)), conv=False))
    rng = random.Random(3)
    errors = {n: {} for n in sm.names}
    for n in sm.names:  # decreasing in bits, different slopes per layer
        e = rng.uniform(1, 10)
        for b in range(2, 9):
            errors[n][b] = e * rng.uniform(0.3, 0.6) ** (b - 2)
    for avg in (2.4, 3.1, 4.6, 6.0):
        budget = sm.budget_for_average_bits(avg)
        a = allocate_optimal(sm, budget, errors, min_fill=0.0)
        best = min(sum(errors[n][b] for n, b in zip(sm.names, combo))
                   for combo in itertools.product(range(2, 9), repeat=len(sm.names))
                   if sm.size_bytes(dict(zip(sm.names, combo))) <= budget)
        assert a.estimated_error == pytest.approx(best, rel=1e-9)
        assert a.size_bytes <= budget


def test_optimal_uses_at_least_99_5_percent_when_feasible():
    # many mid-sized layers: fine-grained steps, so >= 99.5% is always reachable
    shapes = [(64 + 32 * (i % 7), 128 + 32 * (i % 5)) for i in range(40)]
    sm = SizeModel(Stack(shapes=shapes, conv=False))
    errors = {n: {b: (i % 3 + 1) * 4.0 ** -b for b in range(2, 9)} for i, n in enumerate(sm.names)}
    for avg in (2.5, 3.0, 3.5, 4.0, 5.0):
        budget = sm.budget_for_average_bits(avg)
        a = allocate_optimal(sm, budget, errors)
        assert 0.995 * budget <= a.size_bytes <= budget
        # and it is no worse than the round-robin or uniform allocations at the same budget
        for other in (allocate("uniform", sm, budget), allocate("myqasr", sm, budget, scores=_scores(sm))):
            assert a.estimated_error <= sum(errors[n][other.bits[n]] for n in sm.names) + 1e-12


def test_infeasible_budget_states_the_minimum():
    sm = SizeModel(Stack())
    smallest = sm.uniform_bytes(2)
    with pytest.raises(BudgetError, match=rf"below the smallest this model can be: {smallest / MB:.3f} MB"):
        allocate("myqasr", sm, smallest - 1, scores=_scores(sm))
    for method in ("uniform", "optimal", "shuffled"):
        with pytest.raises(BudgetError, match="Raise the budget"):
            allocate(method, sm, smallest - 1, errors={n: {2: 1.0} for n in sm.names})
    assert allocate("myqasr", sm, smallest, scores=_scores(sm)).bits == {n: 2 for n in sm.names}


def test_ablations_differ_from_the_real_allocation():
    shapes = [(128, 128)] * 12
    sm = SizeModel(Stack(shapes=shapes, conv=False))
    scores = {n: float(i) for i, n in enumerate(sm.names)}
    budget = sm.budget_for_average_bits(3.5)
    real = allocate("myqasr", sm, budget, scores=scores)
    rev = allocate("reversed", sm, budget, scores=scores)
    shuf = allocate("shuffled", sm, budget, scores=scores, seed=0)
    assert real.bits != rev.bits and real.bits != shuf.bits
    # same sizes here, so the same number of layers drop a bit, but different ones
    assert sorted(real.bits.values()) == sorted(rev.bits.values())
    assert real.bits[sm.names[-1]] == 4 and rev.bits[sm.names[-1]] == 3  # most sensitive keeps bits only in myqasr


def test_bad_inputs_are_named():
    sm = SizeModel(Stack())
    with pytest.raises(ValueError, match="allocation must be one of"):
        allocate("greedy", sm, 1e9)
    with pytest.raises(ValueError, match="needs per-layer sensitivity scores"):
        allocate("myqasr", sm, 1e9)
    with pytest.raises(ValueError, match="needs per-layer error estimates"):
        allocate("optimal", sm, 1e9)
    with pytest.raises(ValueError, match="no sensitivity score"):
        allocate("myqasr", sm, 1e9, scores={})
    with pytest.raises(ValueError, match="average bits must be within 2-8"):
        sm.budget_for_average_bits(9)
    with pytest.raises(ValueError, match="not float Linear/Conv1d"):
        SizeModel(Stack(), layers=["norm"])
