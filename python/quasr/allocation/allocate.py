"""Bit allocation to a size budget in MB (1 MB = 10^6 bytes).

The budget counts everything that ships, exactly as `model_size_bytes` measures a swapped model:
packed codes at their real size (K padded to the group size), fp16 scales and zeros, float32 biases,
and every float tensor left (norms, embeddings not tied to a quantized layer, kept layers).
`SizeModel` predicts that size for any per-layer bit assignment; the allocators choose one:

- `uniform`: the highest single bit width that fits;
- `myqasr`: the paper's Algorithm 1 (Fish et al., 2023): layers ordered by sensitivity, bits lowered
  one at a time round-robin from the least sensitive, stopping as soon as the model fits, so bit
  depths differ by at most one ("uniformity constraint"). The paper stops there, which can leave up
  to one large layer's bit unused (the last one lowered: on whisper-tiny.en the 20 M-weight token
  projection is 2.5 MB a bit); quasr then gives the room back, one bit to the most sensitive layers
  still at the lower width that fit, which keeps the constraint (`fill=False`: the paper's stop);
- `shuffled` / `reversed`: the paper's ablations, the same procedure with a random or inverted order;
- `optimal`: minimises the summed estimated error (per layer and bit width) under the budget, as a
  multiple-choice knapsack solved by dynamic programming; never over budget, and using at least
  `min_fill` (99.5%) of it whenever such an assignment exists.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ..format import SUPPORTED_BITS, check_bits, resolve_group_size
from ..plan import KEEP, model_size_bytes

ALLOCATIONS = ("myqasr", "optimal", "uniform", "shuffled", "reversed")
MB = 1e6


class BudgetError(ValueError):
    """The budget cannot be met (or is malformed)."""


@dataclass(frozen=True)
class LayerCost:
    """Bytes of one quantizable layer, float or packed at any bit width."""

    name: str
    out_features: int
    in_features: int  # K of the flattened [out, in/groups*k] weight
    module_bytes: int  # every tensor the float module holds (weight-norm g and v, bias, ...)
    bias_numel: int

    def packed_bytes(self, bits: int, group_size: int | None, symmetric: bool) -> int:
        g, padded = resolve_group_size(group_size, self.in_features)
        n_groups = padded // g
        meta = self.out_features * n_groups * 2 * (1 if symmetric else 2)  # fp16 scales (+ zeros)
        return self.out_features * padded * bits // 8 + meta + 4 * self.bias_numel  # bias kept float32

    def float_bytes(self) -> int:
        return self.module_bytes


class SizeModel:
    """Predicts the shipped size of `model` for per-layer bits, without quantizing anything.

    `layers` (default: every float Linear/Conv1d) are the ones to allocate; the rest of the model,
    including layers in `keep`, is a fixed float part. `overhead` adds bytes to a layer whenever it is
    quantized (the transforms a PTQ method stores beside it: methods.transform_overhead).
    """

    def __init__(self, model: nn.Module, layers: list[str] | None = None, group_size: int | None = 128,
                 symmetric: bool = False, keep: tuple[str, ...] | list[str] = (),
                 overhead: dict[str, int] | None = None):
        import fnmatch

        resolve_group_size(group_size, 32)
        all_layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d))}
        names = list(all_layers) if layers is None else list(layers)
        missing = [n for n in names if n not in all_layers]
        if missing:
            raise ValueError(f"not float Linear/Conv1d layers of this model: {missing[:5]}")
        self.group_size, self.symmetric = group_size, symmetric
        self.kept = [n for n in names if any(fnmatch.fnmatch(n, p) for p in keep)]
        names = [n for n in names if n not in self.kept]
        self.layers: dict[str, LayerCost] = {}
        seen: set[int] = set()
        removable = 0
        for n in names:
            m = all_layers[n]
            tensors = list(m.parameters()) + list(m.buffers())  # incl. parametrizations (weight norm)
            if any(id(t) in seen for t in tensors):
                raise ValueError(f"layer {n!r} shares a tensor with another quantizable layer; keep one of them")
            seen.update(id(t) for t in tensors)
            w = m.weight
            cost = LayerCost(n, w.shape[0], w[0].numel(), sum(t.numel() * t.element_size() for t in tensors),
                             0 if m.bias is None else m.bias.numel())
            self.layers[n] = cost
            removable += cost.float_bytes()
        self.fixed_bytes = model_size_bytes(model) - removable
        self.overhead = {n: int((overhead or {}).get(n, 0)) for n in self.layers}

    @property
    def names(self) -> list[str]:
        return list(self.layers)

    def layer_bytes(self, name: str, bits: int | str) -> int:
        c = self.layers[name]
        if bits == KEEP:
            return c.float_bytes()
        return c.packed_bytes(bits, self.group_size, self.symmetric) + self.overhead[name]

    def size_bytes(self, bits: dict[str, int | str]) -> int:
        return self.fixed_bytes + sum(self.layer_bytes(n, bits[n]) for n in self.layers)

    def uniform_bytes(self, bits: int) -> int:
        return self.size_bytes({n: bits for n in self.layers})

    def budget_for_average_bits(self, avg_bits: float) -> int:
        """The budget (bytes) at which a model averages `avg_bits` weight bits: interpolated linearly
        between the uniform sizes at the neighbouring integer widths (2-8)."""
        if not 2 <= avg_bits <= 8:
            raise ValueError(f"average bits must be within 2-8, got {avg_bits}")
        lo = int(math.floor(avg_bits))
        hi = min(lo + 1, 8)
        a, b = self.uniform_bytes(lo), self.uniform_bytes(hi)
        return int(a + (b - a) * (avg_bits - lo))

    def average_bits(self, bits: dict[str, int]) -> float:
        elems = {n: c.out_features * c.in_features for n, c in self.layers.items()}
        return sum(bits[n] * e for n, e in elems.items()) / max(sum(elems.values()), 1)

    def plan(self, bits: dict[str, int]) -> dict:
        layers = {n: {"bits": int(bits[n]), "group_size": -1 if self.group_size is None else self.group_size,
                      "symmetric": self.symmetric} for n in self.layers}
        layers.update({n: KEEP for n in self.kept})
        return {"layers": layers}

    def check_budget(self, budget_bytes: float, min_bits: int = 2) -> None:
        smallest = self.uniform_bytes(min_bits)
        if budget_bytes < smallest:
            raise BudgetError(
                f"budget {budget_bytes / MB:.3f} MB is below the smallest this model can be: "
                f"{smallest / MB:.3f} MB ({min_bits} bits in all {len(self.layers)} quantized layers, group size "
                f"{self.group_size}, plus {self.fixed_bytes / MB:.3f} MB of float parts"
                + (f" and {sum(self.overhead.values()) / MB:.3f} MB of the method's transforms" if any(self.overhead.values()) else "")
                + "). Raise the budget, or "
                f"quantize layers kept in float")


@dataclass
class Allocation:
    method: str
    bits: dict[str, int]
    size_bytes: int
    budget_bytes: int
    average_bits: float
    order: list[str] = field(default_factory=list)  # the sensitivity order used (least sensitive first)
    estimated_error: float | None = None

    def summary(self) -> dict:
        return {"allocation": self.method, "budget_mb": self.budget_bytes / MB, "size_mb": self.size_bytes / MB,
                "fill": self.size_bytes / self.budget_bytes, "average_bits": self.average_bits,
                "bits_histogram": {b: sum(1 for v in self.bits.values() if v == b) for b in sorted(set(self.bits.values()))}}


def _finish(method, sm: SizeModel, bits, budget, order=(), err=None) -> Allocation:
    size = sm.size_bytes(bits)
    assert size <= budget, (size, budget)
    return Allocation(method, dict(bits), size, int(budget), sm.average_bits(bits), list(order), err)


def allocate_uniform(sm: SizeModel, budget_bytes: float) -> Allocation:
    sm.check_budget(budget_bytes)
    best = max(b for b in SUPPORTED_BITS if sm.uniform_bytes(b) <= budget_bytes)
    return _finish("uniform", sm, {n: best for n in sm.layers}, budget_bytes)


def allocate_round_robin(sm: SizeModel, budget_bytes: float, order: list[str], method: str = "myqasr",
                         max_bits: int = 8, min_bits: int = 2, fill: bool = True) -> Allocation:
    """myQASR's Algorithm 1: all layers start at `max_bits`; going round-robin through `order`
    (least sensitive first), each layer loses one bit per turn until the model fits. With `fill`,
    the room left is then handed back: layers at the lower of the two widths, most sensitive first,
    regain their bit wherever it still fits (so widths still differ by at most one)."""
    sm.check_budget(budget_bytes, min_bits)
    if sorted(order) != sorted(sm.layers):
        raise ValueError("the order must name every allocated layer exactly once")
    bits = {n: max_bits for n in sm.layers}
    size = sm.size_bytes(bits)
    while size > budget_bytes:
        for name in order:
            if bits[name] > min_bits:
                size -= sm.layer_bytes(name, bits[name]) - sm.layer_bytes(name, bits[name] - 1)
                bits[name] -= 1
                if size <= budget_bytes:
                    break
    if fill:
        low = min(bits.values())
        for name in reversed(order):
            if bits[name] == low < max_bits:
                step = sm.layer_bytes(name, low + 1) - sm.layer_bytes(name, low)
                if size + step <= budget_bytes:
                    bits[name], size = low + 1, size + step
    return _finish(method, sm, bits, budget_bytes, order)


def sensitivity_order(scores: dict[str, float], layer_order: list[str]) -> list[str]:
    """Least sensitive (lowest score) first; ties broken by execution order, so it is deterministic."""
    pos = {n: i for i, n in enumerate(layer_order)}
    missing = [n for n in layer_order if n not in scores]
    if missing:
        raise ValueError(f"no sensitivity score for {missing[:5]}")
    bad = [n for n in layer_order if not math.isfinite(scores[n])]
    if bad:
        raise ValueError(f"non-finite sensitivity score for {bad[:5]}")
    return sorted(layer_order, key=lambda n: (scores[n], pos[n]))


def allocate_optimal(sm: SizeModel, budget_bytes: float, errors: dict[str, dict[int, float]],
                     min_fill: float = 0.995, resolution: int = 200_000,
                     exact_limit: int = 1_000_000) -> Allocation:
    """Minimise sum(errors[layer][bits]) subject to size <= budget (multiple-choice knapsack).

    Each layer's bytes above its cheapest option are counted exactly (in units of their common
    divisor) when that table has at most `exact_limit` entries, else in units of (spare room) /
    `resolution` rounded up; either way the solution can never exceed the budget; among assignments filling at least `min_fill` of the budget
    (when any exists) the one with the least error is returned.
    """
    sm.check_budget(budget_bytes)
    names = sm.names
    for n in names:
        if n not in errors or not errors[n]:
            raise ValueError(f"no error estimates for layer {n!r}")
        for b, e in errors[n].items():
            check_bits(b)
            if not math.isfinite(e):
                raise ValueError(f"non-finite error estimate for {n!r} at {b} bits")
    # DP over each layer's bytes above its cheapest option: the cheapest assignment (which
    # check_budget proved fits) is always representable exactly
    base = {n: sm.layer_bytes(n, min(errors[n])) for n in names}
    room = budget_bytes - sm.fixed_bytes - sum(base.values())
    if room < 0:
        raise BudgetError(f"no assignment of the given bit widths fits {budget_bytes / MB:.3f} MB")
    # exact when the byte steps share a divisor that makes the table small enough; otherwise
    # rounded up to room/resolution (never over budget, may miss a fit by < one unit per layer)
    step = 0
    for n in names:
        for b in errors[n]:
            step = math.gcd(step, sm.layer_bytes(n, b) - base[n])
    if step and room // step <= exact_limit:
        unit, n_units = step, int(room // step)
    else:
        unit, n_units = max(room / resolution, 1e-9), resolution

    def units(n, b):
        return math.ceil((sm.layer_bytes(n, b) - base[n]) / unit)

    dp = np.full(n_units + 1, np.inf)
    dp[0] = 0.0
    choices = []
    for n in names:
        new = np.full_like(dp, np.inf)
        pick = np.full(n_units + 1, -1, dtype=np.int8)
        for b in sorted(errors[n]):
            c = units(n, b)
            if c > n_units:
                continue
            cand = np.full_like(dp, np.inf)
            cand[c:] = dp[: n_units + 1 - c] + errors[n][b]
            better = cand < new
            new[better] = cand[better]
            pick[better] = b
        dp = new
        choices.append(pick)
    finite = np.isfinite(dp)
    # each layer's extra bytes were rounded up by < 1 unit; units >= s_min guarantee the real fill
    need = min_fill * budget_bytes - (budget_bytes - room)
    s_min = max(0, int(math.ceil(need / unit))) + (0 if unit == step else len(names))
    window = finite.copy()
    window[: min(n_units + 1, s_min)] = False
    pool = window if window.any() else finite
    s = int(np.argmin(np.where(pool, dp, np.inf)))
    bits = {}
    for n, pick in zip(reversed(names), reversed(choices)):
        b = int(pick[s])
        bits[n] = b
        s -= units(n, b)
    err = sum(errors[n][bits[n]] for n in names)
    return _finish("optimal", sm, bits, budget_bytes, err=err)


def allocate(method: str, sm: SizeModel, budget_bytes: float, scores: dict[str, float] | None = None,
             errors: dict[str, dict[int, float]] | None = None, layer_order: list[str] | None = None,
             seed: int = 0) -> Allocation:
    """Dispatch by name. myqasr/reversed need `scores`, optimal needs `errors`; `layer_order` (execution
    order) breaks ties; shuffled uses `seed`."""
    if method not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {method!r}")
    order = [n for n in (layer_order or sm.names) if n in sm.layers]
    order += [n for n in sm.names if n not in order]
    if method == "uniform":
        return allocate_uniform(sm, budget_bytes)
    if method == "optimal":
        if errors is None:
            raise ValueError("the optimal allocation needs per-layer error estimates (see quasr.sensitivity.error_table)")
        return allocate_optimal(sm, budget_bytes, errors)
    if method == "shuffled":
        rng = random.Random(seed)
        shuffled = list(order)
        rng.shuffle(shuffled)
        return allocate_round_robin(sm, budget_bytes, shuffled, "shuffled")
    if scores is None:
        raise ValueError(f"the {method} allocation needs per-layer sensitivity scores (see quasr.sensitivity)")
    ranked = sensitivity_order(scores, order)
    if method == "reversed":
        ranked = ranked[::-1]
    return allocate_round_robin(sm, budget_bytes, ranked, method)
