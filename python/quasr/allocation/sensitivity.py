"""Per-layer sensitivity from unlabelled audio, and per-layer error estimates for allocation.

Everything runs on `CalibrationBatch`es from the model's adapter: fixed inputs in which
encoder-decoders are fed their own greedy transcripts, so no labels are needed anywhere.

Scores (higher = more sensitive = gets more bits):
- activation statistics of each layer's output (myQASR): `median` |y| (the paper's default),
  `mean` |y|, `max` |y|, `std` y, `var` y;
- distances (`kl`, `l2`, `cosine`) between the model's output logits in float and with that one
  layer quantized (RTN at `bits`);
- `fisher`: the layer's mean empirical-Fisher diagonal (HAWQ's average Hessian trace, with the
  Fisher of the self-supervised loss standing in for the Hessian).

Error tables for the `optimal` allocator (estimated damage of each layer at each bit width):
- `fisher`: sum F * (Q_b(W) - W)^2, the second-order estimate of the loss increase;
- `output`: the layer's relative output noise, sum_k E[x_k^2] |dW_k|^2 / sum_k E[x_k^2] |W_k|^2;
- `kl`: measured KL of the output logits with that layer alone at b bits (slow: layers x widths
  forward passes).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..adapters.base import CalibrationBatch, ModelAdapter
from ..format import SUPPORTED_BITS
from ..format import dequantize
from ..plan import flat_weight, rtn_quantizer
from ..quantize import fake_quantize

STATISTICS = ("median", "mean", "max", "std", "var")
DISTANCES = ("kl", "l2", "cosine")
SCORES = STATISTICS + DISTANCES + ("fisher",)
ERRORS = ("fisher", "output", "kl")
# |y| values kept per hook call for the median: a strided subsample (deterministic)
_MEDIAN_SAMPLES_PER_CALL = 8192


@dataclass
class _LayerStats:
    count: int = 0
    abs_sum: float = 0.0
    sum: float = 0.0
    sq_sum: float = 0.0
    abs_max: float = 0.0
    samples: list = field(default_factory=list)
    in_sq_sum: torch.Tensor | None = None  # per input channel sum of x^2
    in_count: int = 0


@dataclass
class CalibrationStatistics:
    """What one hooked pass over the calibration batches saw, per layer."""

    stats: dict[str, _LayerStats]
    modules: dict[str, nn.Module]

    def score(self, statistic: str = "median") -> dict[str, float]:
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
        out = {}
        for n, s in self.stats.items():
            if s.count == 0:
                raise ValueError(f"layer {n!r} never ran on the calibration audio")
            mean = s.sum / s.count
            var = max(s.sq_sum / s.count - mean * mean, 0.0)
            out[n] = {"median": lambda: float(torch.cat(s.samples).median()), "mean": lambda: s.abs_sum / s.count,
                      "max": lambda: s.abs_max, "std": lambda: math.sqrt(var), "var": lambda: var}[statistic]()
        return out

    def input_moments(self) -> dict[str, torch.Tensor]:
        """E[x^2] per column of each layer's flattened weight: [K] for Linear, [N, K] for Conv1d
        (channels repeated over the kernel taps; each output group sees its own input channels)."""
        out = {}
        for n, s in self.stats.items():
            if s.in_count == 0:
                continue
            m = s.in_sq_sum / s.in_count
            mod = self.modules[n]
            if isinstance(mod, nn.Conv1d):
                k, groups = mod.kernel_size[0], mod.groups
                per_group = m.view(groups, -1).repeat_interleave(k, dim=1)  # [groups, Cin/groups * k]
                m = per_group.repeat_interleave(mod.out_channels // groups, dim=0)
            out[n] = m.cpu()  # portable: quantizers move it to the weight's device
        return out


def _hook(stats: _LayerStats, is_conv: bool):
    def hook(module, args, output):
        y = output.detach().float()
        a = y.abs().reshape(-1)
        stats.count += a.numel()
        stats.abs_sum += float(a.sum())
        stats.sum += float(y.sum())
        stats.sq_sum += float((y * y).sum())
        stats.abs_max = max(stats.abs_max, float(a.max()))
        stride = max(1, a.numel() // _MEDIAN_SAMPLES_PER_CALL)
        stats.samples.append(a[::stride].clone())
        x = args[0].detach().float()
        x2 = (x * x).transpose(0, 1).reshape(x.shape[1], -1).sum(1) if is_conv else (x * x).reshape(-1, x.shape[-1]).sum(0)
        stats.in_sq_sum = x2 if stats.in_sq_sum is None else stats.in_sq_sum + x2
        stats.in_count += x.numel() // x.shape[1 if is_conv else -1]

    return hook


def layer_modules(adapter: ModelAdapter, layers: list[str] | None = None) -> dict[str, nn.Module]:
    names = layers or adapter.layer_order()
    mods = {n: adapter.model.get_submodule(n) for n in names}
    bad = [n for n, m in mods.items() if not isinstance(m, (nn.Linear, nn.Conv1d))]
    if bad:
        raise ValueError(f"sensitivity needs float Linear/Conv1d layers; already quantized or other: {bad[:5]}")
    return mods


def collect_statistics(adapter: ModelAdapter, batches: list[CalibrationBatch], layers: list[str] | None = None,
                       progress: bool = False) -> CalibrationStatistics:
    """Forward hooks on every layer over the calibration batches: output statistics and input
    second moments. Raises if a layer never runs (sensitivity would silently skip it)."""
    mods = layer_modules(adapter, layers)
    stats = {n: _LayerStats() for n in mods}
    handles = [m.register_forward_hook(_hook(stats[n], isinstance(m, nn.Conv1d))) for n, m in mods.items()]
    try:
        with torch.inference_mode():
            for b in tqdm(batches, desc="activation statistics", disable=not progress, leave=False):
                adapter.forward_logits(b)
    finally:
        for h in handles:
            h.remove()
    never = [n for n, s in stats.items() if s.count == 0]
    if never:
        raise ValueError(f"layers that never ran on the calibration audio: {never[:5]}")
    return CalibrationStatistics(stats, mods)


@contextmanager
def replaced_weight(module: nn.Module, weight: torch.Tensor):
    """Temporarily run `module` with another weight (same shape)."""
    original = module.weight.data
    module.weight.data = weight.to(original.device, original.dtype).view_as(original)
    try:
        yield
    finally:
        module.weight.data = original


def output_distance(metric: str, ref: torch.Tensor, out: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean distance between two [B, T, V] logit tensors over the masked positions."""
    r, o = ref[mask].float(), out[mask].float()
    if metric == "kl":  # KL(float || quantized)
        return float(F.kl_div(F.log_softmax(o, -1), F.log_softmax(r, -1), log_target=True, reduction="batchmean"))
    if metric == "l2":
        return float(((r - o) ** 2).sum(-1).mean())
    if metric == "cosine":
        return float(1.0 - F.cosine_similarity(r, o, dim=-1).mean())
    raise ValueError(f"distance must be one of {DISTANCES}, got {metric!r}")


def _reference_logits(adapter, batches):
    with torch.inference_mode():
        return [adapter.forward_logits(b) for b in batches]


def distance_scores(adapter: ModelAdapter, batches: list[CalibrationBatch], metric: str = "kl", bits: int = 4,
                    group_size: int | None = 128, symmetric: bool = False, clip: str = "mse",
                    layers: list[str] | None = None, progress: bool = False) -> dict[str, float]:
    """How much the output logits move when each layer alone is quantized to `bits`."""
    if metric not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {metric!r}")
    mods = layer_modules(adapter, layers)
    refs = _reference_logits(adapter, batches)
    scores = {}
    for n, m in tqdm(mods.items(), desc=f"{metric} sensitivity", disable=not progress, leave=False):
        wq = fake_quantize(flat_weight(m), bits, group_size, symmetric, clip)
        with replaced_weight(m, wq), torch.inference_mode():
            d = [output_distance(metric, r, adapter.forward_logits(b), b.mask) for r, b in zip(refs, batches)]
        scores[n] = sum(d) / len(d)
    return scores


def _single_examples(batches: list[CalibrationBatch]):
    for b in batches:
        size = b.mask.shape[0]
        for i in range(size):
            inputs = {k: v[i : i + 1] if torch.is_tensor(v) and v.shape[:1] == (size,) else v for k, v in b.inputs.items()}
            yield CalibrationBatch(inputs, b.mask[i : i + 1], b.targets[i : i + 1], b.texts[i : i + 1])


def fisher_diagonal(adapter: ModelAdapter, batches: list[CalibrationBatch], layers: list[str] | None = None,
                    progress: bool = False) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal of each layer's flattened weight: the mean over calibration clips of
    the squared gradient of the self-supervised loss (cross-entropy against the float model's own
    predictions), one clip at a time."""
    mods = layer_modules(adapter, layers)
    params = list(adapter.model.parameters())
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    for m in mods.values():
        m.weight.requires_grad_(True)
    acc = {n: torch.zeros_like(flat_weight(m), dtype=torch.float32) for n, m in mods.items()}
    examples = 0
    try:
        for ex in tqdm(list(_single_examples(batches)), desc="fisher", disable=not progress, leave=False):
            if not ex.mask.any():
                continue
            for m in mods.values():
                m.weight.grad = None
            loss = adapter.self_supervised_loss(ex, adapter.forward_logits(ex))
            loss.backward()
            for n, m in mods.items():
                if m.weight.grad is not None:
                    acc[n] += m.weight.grad.detach().reshape(acc[n].shape).float() ** 2
            examples += 1
    finally:
        for m in mods.values():
            m.weight.grad = None
        for p, s in zip(params, saved):
            p.requires_grad_(s)
    if examples == 0:
        raise ValueError("no calibration clip produced any output position to compute the Fisher on")
    return {n: (a / examples).cpu() for n, a in acc.items()}


def sensitivity_scores(adapter: ModelAdapter, batches: list[CalibrationBatch], method: str = "median",
                       stats: CalibrationStatistics | None = None, fisher: dict[str, torch.Tensor] | None = None,
                       progress: bool = False, **distance_kw) -> dict[str, float]:
    """One score per layer by `method` (see SCORES); higher means more sensitive."""
    if method not in SCORES:
        raise ValueError(f"sensitivity must be one of {SCORES}, got {method!r}")
    if method in STATISTICS:
        return (stats or collect_statistics(adapter, batches, progress=progress)).score(method)
    if method in DISTANCES:
        return distance_scores(adapter, batches, method, progress=progress, **distance_kw)
    fisher = fisher or fisher_diagonal(adapter, batches, progress=progress)
    return {n: float(f.mean()) for n, f in fisher.items()}


def error_table(adapter: ModelAdapter, batches: list[CalibrationBatch], method: str = "fisher",
                bits: tuple[int, ...] = SUPPORTED_BITS, group_size: int | None = 128, symmetric: bool = False,
                clip: str = "mse", stats: CalibrationStatistics | None = None,
                fisher: dict[str, torch.Tensor] | None = None, progress: bool = False) -> dict[str, dict[int, float]]:
    """Estimated damage of quantizing each layer to each bit width (see the module docstring); the
    weights are quantized exactly as `swap` will (same group size, symmetry and clipping)."""
    if method not in ERRORS:
        raise ValueError(f"error estimate must be one of {ERRORS}, got {method!r}")
    mods = layer_modules(adapter)
    if method == "fisher":
        fisher = fisher or fisher_diagonal(adapter, batches, progress=progress)
    if method == "output" or clip == "hessian":
        stats = stats or collect_statistics(adapter, batches, progress=progress)
    moments = stats.input_moments() if stats is not None else {}
    refs = _reference_logits(adapter, batches) if method == "kl" else None
    quantizer = rtn_quantizer(clip, moments if clip == "hessian" else None)  # exactly what swap will run
    table: dict[str, dict[int, float]] = {}
    for n, m in tqdm(mods.items(), desc=f"{method} errors", disable=not progress, leave=False):
        w = flat_weight(m).float()
        h = None if moments.get(n) is None else moments[n].to(w.device)
        f = fisher[n].to(w.device) if method == "fisher" else None
        row = {}
        for b in bits:
            wq = dequantize(quantizer(n, w, {"bits": b, "group_size": group_size, "symmetric": symmetric}))
            if method == "fisher":
                row[b] = float((f * (wq - w) ** 2).sum())
            elif method == "output":
                hh = h if h.dim() == 2 else h.unsqueeze(0)
                row[b] = float(((wq - w) ** 2 * hh).sum() / ((w * w * hh).sum()).clamp(min=1e-30))
            else:
                with replaced_weight(m, wq), torch.inference_mode():
                    d = [output_distance("kl", r, adapter.forward_logits(bt), bt.mask) for r, bt in zip(refs, batches)]
                row[b] = sum(d) / len(d)
        table[n] = row
    return table
