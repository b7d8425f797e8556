"""What several PTQ methods share: the layer as quasr stores it (input transforms, activation fake-quant,
dequantized weight) in plain torch, its output error on the calibration samples, and the
straight-through activation fake-quant the training methods (OmniQuant, SpinQuant) learn through.

Scaling methods (SmoothQuant, AWQ, OmniQuant) produce per-channel factors s (> 0) for a layer's inputs:
the stored weight is W diag(s) and the input becomes x / s. quasr applies x / s online as a multiply
fused into the kernel's input transform (`input_mul` = 1 / s), which works for every layer of every
family (the original papers fold s into the preceding LayerNorm or linear where the architecture
allows; that saves K multiplies per token and is an optimisation left for later).
"""

from __future__ import annotations

import torch

from ..format import dequantize
from ..grid import straight_through
from ..ops import reference_input_transform
from .pipeline import LayerJob, Method


def stored_output(job: LayerJob, w: torch.Tensor, input_mul: torch.Tensor | None,
                  input_shift: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """The layer as quasr stores it, in plain torch, bias left out: fq((x - shift) * input_mul) w^T
    + shift W^T, w the dequantized weight, fq the layer's activation quantizer (the shift's W^T term
    is what the bias absorbs)."""
    if input_shift is None:
        return reference_input_transform(x, input_mul, job.act) @ w.T
    return reference_input_transform(x - input_shift, input_mul, job.act) @ w.T + input_shift @ job.weight.T


def layer_output_error(job: LayerJob, pw, input_mul: torch.Tensor | None,
                       input_shift: torch.Tensor | None = None, x: torch.Tensor | None = None) -> float:
    """Mean squared error of the layer's output on the calibration samples (or rows `x`): x W^T
    (float, bias left out) against `stored_output`."""
    x = job.inputs.samples if x is None else x
    yq = stored_output(job, dequantize(pw).to(x.device), input_mul, input_shift, x)
    return float(((x @ job.weight.T - yq) ** 2).mean())


def scaled_importance(method: Method, job: LayerJob, s: torch.Tensor) -> torch.Tensor | None:
    """Second moments of the scaled inputs x / s, only when the clip search uses them."""
    return (job.inputs.samples / s).pow(2).mean(0) if method.clip == "hessian" else None


def act_ste(x: torch.Tensor, act) -> torch.Tensor:
    """The layer's activation fake-quant `act` (None: none) with straight-through gradients."""
    return x if act is None else straight_through(x, reference_input_transform(x.detach(), None, act))
