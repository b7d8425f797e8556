"""Static activation ranges from calibration samples (per tensor), for activation fake-quant.

Methods: `minmax` (the observed range), `percentile` (the range between the p-th and (100-p)-th
percentiles, ignoring rare outliers), `mse` and `cosine` (search over shrink factors of the observed
range for the one whose fake-quantized samples have the least squared error / the highest cosine
similarity to the originals, as PTQ4ViT and myQASR calibrate). Weight ranges are calibrated in
quantize.py (including the Hessian-weighted search, which needs the layer's inputs, not outputs).
"""

from __future__ import annotations

import torch

from .format import check_bits

ACTIVATION_RANGE_METHODS = ("minmax", "percentile", "mse", "cosine")


def qparams(lo: float, hi: float, bits: int, symmetric: bool) -> tuple[float, float]:
    """(scale, zero point) for a range. Asymmetric ranges are widened to contain 0 so that 0 (padding,
    ReLU/GELU zeros) stays exact; symmetric uses the signed grid with zero point 2^(b-1)."""
    maxq = (1 << bits) - 1
    if symmetric:
        amax = max(abs(lo), abs(hi))
        scale = max(amax / ((1 << (bits - 1)) - 1), 1e-12)
        return scale, float(1 << (bits - 1))
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / maxq, 1e-12)
    return scale, float(min(max(round(-lo / scale), 0), maxq))


def fake_quant_activation(x: torch.Tensor, scale: float, zero: float, bits: int) -> torch.Tensor:
    q = torch.clamp(torch.round(x / scale + zero), 0, (1 << bits) - 1)
    return (q - zero) * scale


def activation_range(samples: torch.Tensor, bits: int, symmetric: bool = False, method: str = "mse",
                     percentile: float = 99.99, grid: int = 100, min_shrink: float = 0.05) -> tuple[float, float]:
    """(scale, zero point) of a static per-tensor quantizer for activations like `samples`."""
    check_bits(bits)
    if method not in ACTIVATION_RANGE_METHODS:
        raise ValueError(f"activation range method must be one of {ACTIVATION_RANGE_METHODS}, got {method!r}")
    x = samples.detach().float().reshape(-1)
    if x.numel() == 0 or not torch.isfinite(x).all():
        raise ValueError("activation samples must be non-empty and finite")
    lo, hi = float(x.min()), float(x.max())
    if method == "minmax":
        return qparams(lo, hi, bits, symmetric)
    if method == "percentile":
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        sub = x if x.numel() <= 1 << 24 else x[:: x.numel() // (1 << 24) + 1]  # torch.quantile's size limit
        q = torch.quantile(sub, torch.tensor([1 - percentile / 100, percentile / 100]))
        return qparams(float(q[0]), float(q[1]), bits, symmetric)
    best, best_err = qparams(lo, hi, bits, symmetric), float("inf")
    for shrink in torch.linspace(1.0, min_shrink, grid).tolist():
        s, z = qparams(lo * shrink, hi * shrink, bits, symmetric)
        xq = fake_quant_activation(x, s, z, bits)
        if method == "mse":
            err = float(((xq - x) ** 2).mean())
        else:
            err = 1.0 - float(torch.nn.functional.cosine_similarity(x, xq, dim=0))
        if err < best_err:
            best, best_err = (s, z), err
    return best


ACT_GRANULARITIES = ("token", "tensor")


def fake_quant_tokens(x: torch.Tensor, bits: int, symmetric: bool = False) -> torch.Tensor:
    """Per-token dynamic fake-quant over the last dimension, in float32: each row gets the (scale,
    zero) of `qparams` over its own range. The reference of the kernels' dynamic path (same float32
    operations, so they agree bit for bit)."""
    check_bits(bits)
    x = x.to(torch.float32)
    maxq = float((1 << bits) - 1)
    lo = x.amin(-1, keepdim=True).clamp(max=0)
    hi = x.amax(-1, keepdim=True).clamp(min=0)
    if symmetric:
        half = float(1 << (bits - 1))
        scale = (torch.maximum(-lo, hi) / (half - 1)).clamp(min=1e-12)
        zero = torch.full_like(scale, half)
    else:
        scale = ((hi - lo) / maxq).clamp(min=1e-12)
        zero = torch.round(-lo / scale).clamp(0, maxq)
    q = torch.clamp(torch.round(x / scale + zero), 0, maxq)
    return (q - zero) * scale
