"""GPTQ for one layer (Frantar et al., 2023): quantize the weight column by column and spread each
column's rounding error over the not-yet-quantized columns through the inverse Hessian of the layer's
inputs, H = 2 X^T X / n, so that the layer's *output* on calibration inputs changes least.

Scales and zeros are fixed per group before the sweep ("static groups") from the original weight, by
the same range search as RTN. That keeps quasr's packed format (contiguous groups along K, no
per-column group index) even with act-order, where columns are visited by decreasing H_kk.
The model-level pipeline (blockwise calibration) feeds `hessian` from each layer's inputs.
"""

from __future__ import annotations

import torch

from .format import PackedWeight, check_bits, pack_codes, quantize_to_codes, resolve_group_size
from .quantize import rtn_quantize


def input_hessian(x: torch.Tensor) -> torch.Tensor:
    """H = 2 X^T X / n for inputs x [..., K] (float64 accumulate, returned float32)."""
    x = x.reshape(-1, x.shape[-1]).double()
    return (2.0 / max(x.shape[0], 1) * x.T @ x).float()


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    group_size: int | None = 128,
    symmetric: bool = False,
    act_order: bool = True,
    damp: float = 0.01,
    block_size: int = 128,
    clip: str = "mse",
    name: str = "weight",
    importance: torch.Tensor | None = None,
) -> PackedWeight:
    """Quantize a float [N, K] weight with GPTQ given the layer's input Hessian [K, K]."""
    check_bits(bits)
    if weight.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D weight, got shape {tuple(weight.shape)}")
    k = weight.shape[1]
    if tuple(hessian.shape) != (k, k):
        raise ValueError(f"{name}: Hessian must be [{k}, {k}] (the layer's input features), got {tuple(hessian.shape)}")
    if not torch.isfinite(hessian).all():
        raise ValueError(f"{name}: Hessian has non-finite entries; check the calibration activations")
    if not 0 < damp < 1:
        raise ValueError(f"damp must be in (0, 1) (a fraction of the mean Hessian diagonal), got {damp}")
    g, _ = resolve_group_size(group_size, k)
    dev = weight.device
    W = weight.detach().to(torch.float32).clone()
    H = hessian.detach().to(dev, torch.float32).clone()

    # inputs that never fired on the calibration audio: a unit diagonal decouples them, so they are
    # rounded to nearest (kept, not zeroed: they may fire on other audio) and pass no error on
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    # static per-group ranges from the original weight
    ranges = rtn_quantize(W, bits, group_size, symmetric, clip=clip, name=name, importance=importance)
    maxq = (1 << bits) - 1
    mid = float(1 << (bits - 1))

    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(k, device=dev)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(k, device=dev)
    try:
        L = torch.linalg.cholesky(H)
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    except RuntimeError:  # torch.linalg.LinAlgError subclasses RuntimeError
        raise ValueError(f"{name}: the damped Hessian is not positive definite; raise damp (now {damp}) "
                         f"or use more calibration audio") from None

    col_group = perm // g  # group of each (permuted) column
    s_cols = ranges.scales.float()[:, col_group]  # [N, K] scale of every permuted column
    z_cols = torch.full_like(s_cols, mid) if symmetric else ranges.zeros.float()[:, col_group]
    Q = torch.zeros_like(W)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            s, z = s_cols[:, i1 + i], z_cols[:, i1 + i]
            q = (torch.round(w / s + z).clamp(0, maxq) - z) * s
            Q[:, i1 + i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            E1[:, i] = err
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]

    Q = Q[:, torch.argsort(perm)]
    codes = quantize_to_codes(Q, ranges.scales, ranges.zeros, bits, g)  # Q is on the grid: exact rounding
    pw = PackedWeight(pack_codes(codes, bits), ranges.scales, ranges.zeros, bits, g, k)
    pw.validate()
    return pw
