"""HQQ (Badri & Shaji 2023): calibration-free half-quadratic rounding, a per-group range fitted to an
l_p-sparse weight error."""

from __future__ import annotations

import torch

from ..format import PackedWeight, pack_codes, quantize_to_codes, resolve_group_size
from ..grid import MIN_SCALE, qmax, round_clamp, scale_zero
from ..quantize import _grouped
from .pipeline import LayerResult, Method


def _shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Proximal operator of the l_p (p < 1) norm, HQQ's generalised soft-thresholding."""
    return torch.sign(x) * torch.relu(x.abs() - (1.0 / beta) * x.abs().clamp(min=1e-8).pow(p - 1))


def hqq_quantize(weight: torch.Tensor, bits: int, group_size: int | None, symmetric: bool, lp: float = 0.7,
                 beta: float = 10.0, kappa: float = 1.01, iters: int = 20, name: str = "weight") -> PackedWeight:
    """HQQ (Badri & Shaji 2023): calibration-free. Starting from min-max ranges, alternate between
    the l_p-sparse weight error W_e (a proximal step: the solver tolerates a few large errors
    instead of spreading error everywhere) and the closed-form zero point (asymmetric) or scale
    (symmetric) that best fits W - W_e; keep the iterate with the smallest squared error."""
    n, k = weight.shape
    g, padded = resolve_group_size(group_size, k)
    w, mask = _grouped(weight.detach(), g, padded)
    m = mask.to(w.dtype)
    maxq = qmax(bits)
    scale, zero = scale_zero(w.amin(-1), w.amax(-1), bits, symmetric)
    s, z = scale.unsqueeze(-1), zero.unsqueeze(-1)

    def err_of(s, z):
        q = round_clamp(w, s, z, bits)
        return (((q - z) * s - w) ** 2 * m).sum(-1), q

    best_err, _ = err_of(s, z)
    best_s, best_z = s.clone(), z.clone()
    for _ in range(iters):
        q = round_clamp(w, s, z, bits)
        w_e = _shrink_lp(w - (q - z) * s, beta, lp)
        target = w - w_e
        if symmetric:  # least-squares scale for fixed codes
            c = (q - z) * m
            s = ((c * target).sum(-1, keepdim=True) / (c * c).sum(-1, keepdim=True).clamp(min=1e-12)).clamp(min=MIN_SCALE)
        else:  # closed-form zero for a fixed scale
            z = (((q - target / s) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True)).clamp(0, maxq)
        s = s.to(torch.float16).to(torch.float32)
        z = z.to(torch.float16).to(torch.float32)
        err, _ = err_of(s, z)
        better = (err < best_err).unsqueeze(-1)
        best_err = torch.minimum(err, best_err)
        best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
        beta *= kappa
    scales16 = best_s.squeeze(-1).to(torch.float16)
    zeros16 = None if symmetric else best_z.squeeze(-1).to(torch.float16)
    if not torch.isfinite(scales16).all():
        raise ValueError(f"{name}: weights too large for float16 scales")
    codes = quantize_to_codes(weight.detach(), scales16, zeros16, bits, g)
    pw = PackedWeight(pack_codes(codes, bits), scales16, zeros16, bits, g, k)
    pw.validate()
    return pw


class HQQ(Method):
    name = "hqq"
    needs_calibration = False

    @classmethod
    def options(cls):
        return {"lp": 0.7, "beta": 10.0, "kappa": 1.01, "iters": 20}

    def quantize_layer(self, job):
        s = job.spec
        return LayerResult(hqq_quantize(job.weight, s["bits"], s["group_size"], s["symmetric"], self.lp, self.beta,
                                        self.kappa, self.iters, name=job.name))
