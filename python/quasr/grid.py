"""The rounding grid every quantizer uses: a b-bit grid over a range [lo, hi] has a scale and an integer
zero point, x is rounded to the code round(x / scale + zero) clamped to [0, 2^b - 1], and fake-quant is
(code - zero) * scale. Asymmetric ranges are widened to contain 0 (so 0 stays exact and the zero point
lies in [0, 2^b - 1]); symmetric ranges use scale = max(|lo|, |hi|) / (2^(b-1) - 1) and the implicit
zero point 2^(b-1) (format.py).

Weights (RTN, GPTQ, HQQ, OmniQuant's packing), activations (static per tensor, dynamic per token: the
plain-torch reference of the kernels' fused input fake-quant) and the straight-through versions that
OmniQuant and SpinQuant train through all come from here. The variants keep the exact float operations
of the code they came from, which differ in three ways (so results stay bit-identical):

- `scale_zero(..., fp16_scale=True, min_scale=MIN_SCALE)` is the stored weight grid (scales rounded to
  float16 before the zero point is taken from them); activations and the straight-through grid keep
  float32 scales and clamp them at 1e-12 / 1e-8 instead;
- `fake_quant` rounds x / scale + zero; `fake_quant_ste` rounds x / scale and then adds the zero point
  (equal except at ties, where half-to-even rounding sees different values);
- `qparams` is the static activation grid in Python floats (float64), for one per-tensor range.
"""

from __future__ import annotations

from typing import Callable

import torch

from .format import check_bits

# Smallest positive fp16 scale: a group of all-zero weights still gets a valid (harmless) scale.
MIN_SCALE = 2.0**-24


def qmax(bits: int) -> int:
    """The largest code of a b-bit grid, 2^b - 1."""
    return (1 << bits) - 1


def midpoint(bits: int) -> int:
    """The zero point of the symmetric b-bit grid, 2^(b-1)."""
    return 1 << (bits - 1)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity gradient backward (straight-through)."""
    return (x.round() - x).detach() + x


def straight_through(x: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    """xq forward (computed from x without gradients), identity gradient to x backward."""
    return x + (xq - x).detach()


def scale_zero(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool, *, fp16_scale: bool = True,
               min_scale: float = MIN_SCALE,
               rounding: Callable[[torch.Tensor], torch.Tensor] = torch.round) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero point) of the b-bit grid over each range [lo, hi] (tensors, elementwise).

    Symmetric: scale = max(|lo|, |hi|) / (2^(b-1) - 1), zero = 2^(b-1) (a tensor like scale).
    Asymmetric: the range widened to contain 0, scale = (hi - lo) / (2^b - 1), zero = rounding(-lo /
    scale) clamped to [0, 2^b - 1]. `fp16_scale` rounds the scale to float16 first (the stored weight
    grid: the zero point is then exact for the scale that ships); scales are clamped at `min_scale`.
    `rounding=round_ste` gives the straight-through grid (gradients to lo and hi)."""
    maxq = qmax(bits)
    if symmetric:
        scale = torch.maximum(lo.abs(), hi.abs()) / (midpoint(bits) - 1)
    else:  # 0 always inside the range, so it stays exactly representable and z is in [0, maxq]
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = (hi - lo) / maxq
    if fp16_scale:
        scale = scale.to(torch.float16).to(torch.float32)
    scale = scale.clamp(min=min_scale)
    if symmetric:
        return scale, torch.full_like(scale, float(midpoint(bits)))
    return scale, rounding(-lo / scale).clamp(0, maxq)


def qparams(lo: float, hi: float, bits: int, symmetric: bool) -> tuple[float, float]:
    """(scale, zero point) for one range, in Python floats (static per-tensor activation ranges).
    Asymmetric ranges are widened to contain 0 so that 0 (padding, ReLU/GELU zeros) stays exact;
    symmetric uses the signed grid with zero point 2^(b-1)."""
    maxq = qmax(bits)
    if symmetric:
        amax = max(abs(lo), abs(hi))
        scale = max(amax / (midpoint(bits) - 1), 1e-12)
        return scale, float(midpoint(bits))
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / maxq, 1e-12)
    return scale, float(min(max(round(-lo / scale), 0), maxq))


def round_clamp(x: torch.Tensor, scale, zero, bits: int) -> torch.Tensor:
    """The codes of x on the grid: round(x / scale + zero) clamped to [0, 2^b - 1] (float values).
    scale and zero are tensors broadcasting against x, or Python numbers."""
    return torch.clamp(torch.round(x / scale + zero), 0, qmax(bits))


def fake_quant(x: torch.Tensor, scale, zero, bits: int) -> torch.Tensor:
    """x rounded onto the grid and back: (round_clamp(x) - zero) * scale."""
    return (round_clamp(x, scale, zero, bits) - zero) * scale


def fake_quant_ste(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Differentiable fake-quant: clamp(round_ste(x / scale) + zero) - zero, times scale (gradients
    to x, scale and zero straight through the rounding)."""
    q = torch.clamp(round_ste(x / scale) + zero, 0, qmax(bits))
    return (q - zero) * scale


def fake_quant_range_ste(w: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int,
                         symmetric: bool) -> torch.Tensor:
    """Differentiable (straight-through) group fake-quant of w [N, G, g] with ranges [N, G] (float32
    scales, at least 1e-8): what OmniQuant's learnable clipping and SpinQuant's rotations train on."""
    scale, zero = scale_zero(lo.unsqueeze(-1), hi.unsqueeze(-1), bits, symmetric, fp16_scale=False, min_scale=1e-8,
                             rounding=round_ste)
    return fake_quant_ste(w, scale, zero, bits)


def fake_quant_groups(x: torch.Tensor, bits: int, symmetric: bool, group_size: int) -> torch.Tensor:
    """Dynamic fake-quant with one range per row and block of `group_size` columns (the weight's
    groups: x is zero-padded to whole groups, as the kernels see it). The reference of the int8
    kernels' per-group activations."""
    k = x.shape[-1]
    pad = -k % group_size
    xp = torch.nn.functional.pad(x.to(torch.float32), (0, pad))
    y = fake_quant_tokens(xp.reshape(*xp.shape[:-1], -1, group_size), bits, symmetric)
    return y.reshape(xp.shape)[..., :k]


def fake_quant_tokens(x: torch.Tensor, bits: int, symmetric: bool = False) -> torch.Tensor:
    """Per-token dynamic fake-quant over the last dimension, in float32: each row gets the (scale,
    zero) of its own range (float32 scales, at least 1e-12). The reference of the kernels' dynamic
    path (same float32 operations, so they agree bit for bit)."""
    check_bits(bits)
    x = x.to(torch.float32)
    scale, zero = scale_zero(x.amin(-1, keepdim=True), x.amax(-1, keepdim=True), bits, symmetric, fp16_scale=False,
                             min_scale=1e-12)
    return fake_quant(x, scale, zero, bits)
