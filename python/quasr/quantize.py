"""Round-to-nearest (RTN) weight quantization into the packed format, with min-max ranges or an
MSE-optimal clipping search per group."""

from __future__ import annotations

import torch

from .format import PackedWeight, check_bits, pack_codes, quantize_to_codes, resolve_group_size

CLIP_METHODS = ("minmax", "mse")
# Smallest positive fp16 scale: a group of all-zero weights still gets a valid (harmless) scale.
_MIN_SCALE = 2.0**-24


def _grouped(weight: torch.Tensor, group_size: int, padded: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] -> ([N, G, g] float32 with padding replicated from the last column, valid mask)."""
    n, k = weight.shape
    w = weight.to(torch.float32)
    if padded > k:  # replicate: min/max are unchanged and the mask keeps padding out of errors
        w = torch.cat([w, w[:, -1:].expand(n, padded - k)], dim=1)
    mask = torch.zeros(padded, dtype=torch.bool)
    mask[:k] = True
    return w.view(n, padded // group_size, group_size), mask.view(padded // group_size, group_size)


def _scale_zero(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool):
    maxq = (1 << bits) - 1
    if symmetric:
        amax = torch.maximum(lo.abs(), hi.abs())
        scale = amax / ((1 << (bits - 1)) - 1)
        zero = None
    else:  # 0 always inside the range, so it stays exactly representable and z is in [0, maxq]
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = (hi - lo) / maxq
        zero = None
    scale = scale.to(torch.float16).to(torch.float32).clamp(min=_MIN_SCALE)
    if not symmetric:
        zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def _fake_quant(w, scale, zero, bits, symmetric):
    maxq = (1 << bits) - 1
    z = torch.full_like(scale, float(1 << (bits - 1))) if symmetric else zero
    q = torch.round(w / scale.unsqueeze(-1) + z.unsqueeze(-1)).clamp(0, maxq)
    return (q - z.unsqueeze(-1)) * scale.unsqueeze(-1)


def rtn_quantize(
    weight: torch.Tensor,
    bits: int,
    group_size: int | None = 128,
    symmetric: bool = False,
    clip: str = "mse",
    grid: int = 20,
    min_shrink: float = 0.5,
    name: str = "weight",
) -> PackedWeight:
    """Quantize a float [N, K] weight to `bits` bits, group-wise along K.

    clip="minmax" uses each group's full range. clip="mse" tries `grid` shrink factors of the range
    from 1 down to `min_shrink` and keeps, per group, the one with the smallest squared error.
    """
    check_bits(bits)
    if clip not in CLIP_METHODS:
        raise ValueError(f"clip must be one of {CLIP_METHODS}, got {clip!r}")
    if weight.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D weight, got shape {tuple(weight.shape)}")
    bad = (~torch.isfinite(weight)).sum().item()
    if bad:
        raise ValueError(
            f"{name}: {bad} non-finite weight(s) (NaN/inf); fix the checkpoint, or keep this layer in "
            f"float by marking it \"keep\" in the plan"
        )
    n, k = weight.shape
    g, padded = resolve_group_size(group_size, k)
    w, mask = _grouped(weight.detach().cpu(), g, padded)
    lo, hi = w.amin(-1), w.amax(-1)
    scale, zero = _scale_zero(lo, hi, bits, symmetric)
    if clip == "mse" and grid > 1:
        best = ((_fake_quant(w, scale, zero, bits, symmetric) - w) ** 2 * mask).sum(-1)
        for shrink in torch.linspace(1.0, min_shrink, grid)[1:].tolist():
            s, z = _scale_zero(lo * shrink, hi * shrink, bits, symmetric)
            err = ((_fake_quant(w, s, z, bits, symmetric) - w) ** 2 * mask).sum(-1)
            better = err < best
            best = torch.where(better, err, best)
            scale = torch.where(better, s, scale)
            if not symmetric:
                zero = torch.where(better, z, zero)
    scales16 = scale.to(torch.float16)
    if not torch.isfinite(scales16).all():
        raise ValueError(f"{name}: weights too large for float16 scales (max |w| = {weight.abs().max():.3g})")
    zeros16 = None if symmetric else zero.to(torch.float16)
    codes = quantize_to_codes(weight.detach().cpu(), scales16, zeros16, bits, g)
    pw = PackedWeight(pack_codes(codes, bits), scales16, zeros16, bits, g, k)
    pw.validate()
    return pw
