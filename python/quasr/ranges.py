"""Static activation ranges from calibration samples (per tensor), for activation fake-quant.

Methods: `minmax` (the observed range), `percentile` (the range between the p-th and (100-p)-th
percentiles, ignoring rare outliers), `mse` and `cosine` (search over shrink factors of the observed
range for the one whose fake-quantized samples have the least squared error / the highest cosine
similarity to the originals, as PTQ4ViT and myQASR calibrate). Weight ranges are calibrated in
quantize.py (including the Hessian-weighted search, which needs the layer's inputs, not outputs); the
grid itself (scale and zero point of a range, fake-quant, per-token dynamic fake-quant) is grid.py.
"""

from __future__ import annotations

import torch

from .format import check_bits
from .grid import fake_quant, qparams

ACTIVATION_RANGE_METHODS = ("minmax", "percentile", "mse", "cosine")


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
        xq = fake_quant(x, s, z, bits)
        if method == "mse":
            err = float(((xq - x) ** 2).mean())
        else:
            err = 1.0 - float(torch.nn.functional.cosine_similarity(x, xq, dim=0))
        if err < best_err:
            best, best_err = (s, z), err
    return best


# token: dynamic per row; group: dynamic per row and weight group (int8 activations as ONNX Runtime's
# accuracy level 4 and llama.cpp's q8 blocks); tensor: one static range calibrated beforehand.
ACT_GRANULARITIES = ("token", "tensor", "group")

