"""Round-to-nearest (RTN) weight quantization into the packed format. Ranges per group: min-max, or a
clipping search that shrinks the range and keeps, per group, the shrink that minimises an error:
squared error ("mse"), 1 - cosine similarity ("cosine", PTQ4ViT/myQASR), or squared error weighted by
the layer's input second moments E[x_k^2] ("hessian": the diagonal of the layer-wise Hessian X^T X,
so errors on inputs that are large on the user's audio cost more)."""

from __future__ import annotations

import torch

from .format import PackedWeight, check_bits, dequantize, pack_codes, quantize_to_codes, resolve_group_size
from .grid import fake_quant, scale_zero

CLIP_METHODS = ("minmax", "mse", "cosine", "hessian")


def _grouped(weight: torch.Tensor, group_size: int, padded: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] -> ([N, G, g] float32 with padding replicated from the last column, valid mask)."""
    n, k = weight.shape
    w = weight.to(torch.float32)
    if padded > k:  # replicate: min/max are unchanged and the mask keeps padding out of errors
        w = torch.cat([w, w[:, -1:].expand(n, padded - k)], dim=1)
    mask = torch.zeros(padded, dtype=torch.bool, device=weight.device)
    mask[:k] = True
    return w.view(n, padded // group_size, group_size), mask.view(padded // group_size, group_size)


def _grouped_importance(importance: torch.Tensor, n: int, k: int, g: int, padded: int, device) -> torch.Tensor:
    """[K] or [N, K] non-negative weights -> [N or 1, G, g] (padding columns weigh 0)."""
    h = importance.detach().to(device, torch.float32)
    if h.dim() == 1:
        h = h.unsqueeze(0)
    if h.shape[-1] != k or h.shape[0] not in (1, n):
        raise ValueError(f"importance must have shape [{k}] or [{n}, {k}], got {tuple(importance.shape)}")
    if not torch.isfinite(h).all() or (h < 0).any():
        raise ValueError("importance (input second moments) must be finite and non-negative")
    h = torch.cat([h, h.new_zeros(h.shape[0], padded - k)], 1) if padded > k else h
    return h.view(h.shape[0], padded // g, g)


def _group_error(clip: str, w: torch.Tensor, wq: torch.Tensor, mask: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
    if clip == "cosine":
        wm, qm = w * mask, wq * mask
        cos = (wm * qm).sum(-1) / (wm.norm(dim=-1) * qm.norm(dim=-1)).clamp(min=1e-30)
        return 1.0 - cos
    err = (wq - w) ** 2 * mask
    return (err * h).sum(-1) if clip == "hessian" else err.sum(-1)


def rtn_quantize(
    weight: torch.Tensor,
    bits: int,
    group_size: int | None = 128,
    symmetric: bool = False,
    clip: str = "mse",
    grid: int = 20,
    min_shrink: float = 0.5,
    name: str = "weight",
    importance: torch.Tensor | None = None,
) -> PackedWeight:
    """Quantize a float [N, K] weight to `bits` bits, group-wise along K.

    clip="minmax" uses each group's full range. The other methods try `grid` shrink factors of the
    range from 1 down to `min_shrink` and keep, per group, the one with the smallest error; "hessian"
    needs `importance`, the layer's input second moments ([K], or [N, K] for grouped convolutions).
    """
    check_bits(bits)
    if clip not in CLIP_METHODS:
        raise ValueError(f"clip must be one of {CLIP_METHODS}, got {clip!r}")
    if clip == "hessian" and importance is None:
        raise ValueError(f"{name}: hessian clipping needs the layer's input second moments from calibration "
                         f"audio (importance=...); use clip='mse' without calibration data")
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
    # runs where the weight lives (CPU, or the GPU a model was loaded on)
    w, mask = _grouped(weight.detach(), g, padded)
    h = _grouped_importance(importance, n, k, g, padded, weight.device) if clip == "hessian" else None
    lo, hi = w.amin(-1), w.amax(-1)
    scale, zero = scale_zero(lo, hi, bits, symmetric)
    if clip != "minmax" and grid > 1:
        best = _group_error(clip, w, fake_quant(w, scale.unsqueeze(-1), zero.unsqueeze(-1), bits), mask, h)
        for shrink in torch.linspace(1.0, min_shrink, grid)[1:].tolist():
            s, z = scale_zero(lo * shrink, hi * shrink, bits, symmetric)
            err = _group_error(clip, w, fake_quant(w, s.unsqueeze(-1), z.unsqueeze(-1), bits), mask, h)
            better = err < best
            best = torch.where(better, err, best)
            scale = torch.where(better, s, scale)
            if not symmetric:
                zero = torch.where(better, z, zero)
    scales16 = scale.to(torch.float16)
    if not torch.isfinite(scales16).all():
        raise ValueError(f"{name}: weights too large for float16 scales (max |w| = {weight.abs().max():.3g})")
    zeros16 = None if symmetric else zero.to(torch.float16)
    codes = quantize_to_codes(weight.detach(), scales16, zeros16, bits, g)
    pw = PackedWeight(pack_codes(codes, bits), scales16, zeros16, bits, g, k)
    pw.validate()
    return pw


def fake_quantize(weight: torch.Tensor, bits: int, group_size: int | None = 128, symmetric: bool = False,
                  clip: str = "mse", importance: torch.Tensor | None = None) -> torch.Tensor:
    """The float [N, K] weight RTN would ship: quantized into the packed format and dequantized."""
    pw = rtn_quantize(weight, bits, group_size, symmetric, clip, importance=importance)
    return dequantize(pw).to(weight.dtype)
