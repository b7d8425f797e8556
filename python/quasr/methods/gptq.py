"""GPTQ for one layer (Frantar et al., 2023): quantize the weight column by column and spread each
column's rounding error over the not-yet-quantized columns through the inverse Hessian of the layer's
inputs, H = 2 X^T X / n, so that the layer's *output* on calibration inputs changes least.

Scales and zeros are fixed per group before the sweep ("static groups") from the original weight, by
the same range search as RTN. That keeps quasr's packed format (contiguous groups along K, no
per-column group index) even with act-order, where columns are visited by decreasing H_kk.
The model-level pipeline (blockwise calibration) feeds `hessian` from each layer's inputs; `GPTQ` is the
method (methods/pipeline.py's interface) around `gptq_quantize`.
"""

from __future__ import annotations

import torch

from ..format import PackedWeight, check_bits, pack_codes, quantize_to_codes, resolve_group_size
from ..grid import fake_quant, midpoint
from ..quantize import rtn_quantize
from .pipeline import LayerResult, Method
from .rtn import rtn_layer


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
    mid = float(midpoint(bits))

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
            q = fake_quant(w, s, z, bits)
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


class GPTQ(Method):
    """GPTQ (Frantar et al. 2023): columns quantized one at a time, the rounding error of each
    compensated on the columns not yet quantized through the inverse layer Hessian of the
    calibration inputs; act-order, group-wise static ranges (`gptq_quantize` above).

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
