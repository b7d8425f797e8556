"""RTN, GPTQ and HQQ: methods that change only how each layer's weight is rounded."""

from __future__ import annotations

import torch

from ..format import PackedWeight, pack_codes, quantize_to_codes, resolve_group_size
from ..gptq import gptq_quantize
from ..quantize import _grouped, _scale_zero, rtn_quantize
from .pipeline import LayerJob, LayerResult, Method


def rtn_layer(job: LayerJob, clip: str, weight: torch.Tensor | None = None, importance=None) -> PackedWeight:
    """RTN of `weight` (default: the job's) with the job's spec; "hessian" clipping without inputs
    falls back to "mse"."""
    w = job.weight if weight is None else weight
    if clip == "hessian" and importance is None:
        importance = job.inputs.second_moment() if job.inputs is not None else None
    c = "mse" if clip == "hessian" and importance is None else clip
    s = job.spec
    return rtn_quantize(w, s["bits"], s["group_size"], s["symmetric"], clip=c, name=job.name, importance=importance)


class RTN(Method):
    """Round to nearest with per-group ranges (clipping search: minmax/mse/cosine, or "hessian"
    weighted by the calibration inputs' second moments)."""

    name = "rtn"
    needs_calibration = False

    def __init__(self, **kw):
        super().__init__(**kw)
        self.needs_calibration = self.clip == "hessian"

    def quantize_layer(self, job):
        return LayerResult(rtn_layer(job, self.clip))


class GPTQ(Method):
    """GPTQ (Frantar et al. 2023): columns quantized one at a time, the rounding error of each
    compensated on the columns not yet quantized through the inverse layer Hessian of the
    calibration inputs; act-order, group-wise static ranges (see quasr.gptq).

    `damp` (a fraction of the mean Hessian diagonal added to it) defaults to "auto": the paper's 0.01
    where the Hessian comes from at least 4K input rows, 0.1 where it comes from fewer. A few clips
    give an encoder tens of thousands of rows but a decoder only a few hundred tokens for K up to
    1536, and there 0.01 fits the calibration rows, not the speech: on whisper-tiny.en (16 clips)
    0.1 cuts the decoder layers' held-out output error by 8-22% (bench/gptq_heldout.py)."""

    name = "gptq"
    needs_hessian = True
    few_rows_per_k = 4  # below rows = 4K the Hessian is under-determined enough to damp harder

    @classmethod
    def options(cls):
        return {"act_order": True, "damp": "auto", "block_size": 128}

    def __init__(self, **kw):
        super().__init__(**kw)
        if self.damp != "auto" and not (isinstance(self.damp, (int, float)) and 0 < self.damp < 1):
            raise ValueError(f"damp must be 'auto' or a fraction in (0, 1) of the mean Hessian diagonal, "
                             f"got {self.damp!r}")

    def damp_for(self, rows: int, k: int) -> float:
        if self.damp != "auto":
            return float(self.damp)
        return 0.01 if rows >= self.few_rows_per_k * k else 0.1

    def quantize_layer(self, job):
        if job.inputs is None:  # grouped convolutions: no per-layer Hessian
            return LayerResult(rtn_layer(job, self.clip))
        s = job.spec
        importance = job.inputs.second_moment() if self.clip == "hessian" else None
        damp = self.damp_for(job.inputs.count, job.weight.shape[1])
        pw = gptq_quantize(job.weight, job.inputs.hessian(), s["bits"], s["group_size"], s["symmetric"],
                           act_order=self.act_order, damp=damp, block_size=self.block_size, clip=self.clip,
                           name=job.name, importance=importance)
        return LayerResult(pw)


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
    maxq = (1 << bits) - 1
    scale, zero = _scale_zero(w.amin(-1), w.amax(-1), bits, symmetric)
    if symmetric:
        zero = torch.full_like(scale, float(1 << (bits - 1)))
    s, z = scale.unsqueeze(-1), zero.unsqueeze(-1)

    def err_of(s, z):
        q = torch.round(w / s + z).clamp(0, maxq)
        return (((q - z) * s - w) ** 2 * m).sum(-1), q

    best_err, _ = err_of(s, z)
    best_s, best_z = s.clone(), z.clone()
    for _ in range(iters):
        q = torch.round(w / s + z).clamp(0, maxq)
        w_e = _shrink_lp(w - (q - z) * s, beta, lp)
        target = w - w_e
        if symmetric:  # least-squares scale for fixed codes
            c = (q - z) * m
            s = ((c * target).sum(-1, keepdim=True) / (c * c).sum(-1, keepdim=True).clamp(min=1e-12)).clamp(min=2.0**-24)
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
