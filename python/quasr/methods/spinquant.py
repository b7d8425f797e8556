"""SpinQuant (Liu et al. 2024): QuaRot's online rotation of every layer's input followed by a learned
orthogonal Kronecker factor Ra kron Rb (Cayley-parametrised), trained on the layer's output error with
weights and activations fake-quantized (straight-through); weights then rounded by GPTQ on the rotated
Hessian (or RTN)."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..format import resolve_group_size
from ..grid import fake_quant_range_ste
from ..quantize import _grouped
from ..rotation import Rotation, kron_apply
from .common import act_ste, layer_output_error
from .pipeline import LayerInputs, LayerResult
from .quarot import QuaRot


def _cayley(x: torch.Tensor) -> torch.Tensor:
    """An orthogonal matrix from any square x: the Cayley transform (I - A)^-1 (I + A) of the skew
    A = x - x^T (identity at x = 0; every rotation without eigenvalue -1 is reachable)."""
    a = x - x.T
    eye = torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
    return torch.linalg.solve(eye - a, eye + a)


def learn_rotation(x: torch.Tensor, weight: torch.Tensor, spec: dict, act, a: int, b: int, steps: int = 50,
                   lr: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Orthogonal P = Ra kron Rb (Ra [a, a], Rb [b, b]) minimising the layer's relative output error
    ||x W^T - fq(x P) Q(W P)^T||^2 / ||x W^T||^2 on input rows x [n, a*b], with Q the spec's
    group-wise min-max weight quantizer and fq its activation quantizer (both straight-through).
    Ra and Rb are Cayley-parametrised and trained with Adam from the identity; the best iterate is
    kept. Returns (Ra, Rb, error at the identity, error at the result)."""
    n, k = weight.shape
    g, padded = resolve_group_size(spec["group_size"], k)
    y = x @ weight.T
    norm = (y**2).mean().clamp(min=1e-30)
    dev = weight.device  # trained where the weights live (CPU or GPU)
    xa = torch.zeros(a, a, device=dev, requires_grad=True)
    xb = torch.zeros(b, b, device=dev, requires_grad=True)
    opt = torch.optim.Adam([xa, xb], lr=lr)
    best = (float("inf"), torch.eye(a, device=dev), torch.eye(b, device=dev))
    first = None
    with torch.enable_grad():
        for step in range(steps + 1):
            ra, rb = _cayley(xa), _cayley(xb)
            wr = kron_apply(weight, ra, rb)
            wg, _ = _grouped(wr, g, padded)
            wq = fake_quant_range_ste(wg, wg.amin(-1), wg.amax(-1), spec["bits"], spec["symmetric"]).reshape(n, padded)[:, :k]
            loss = ((y - act_ste(kron_apply(x, ra, rb), act) @ wq.T) ** 2).mean() / norm
            value = loss.item()
            first = value if first is None else first
            if value < best[0]:
                best = (value, ra.detach().clone(), rb.detach().clone())
            if step == steps:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
    return best[1], best[2], first, best[0]


class SpinQuant(QuaRot):
    """SpinQuant (Liu et al. 2024): rotations learned, not random. Each layer's online rotation is
    QuaRot's randomised Hadamard diag(s) (L kron R) followed by a learned orthogonal Ra kron Rb, so
    the stored factors are L Ra and R Rb and the online cost stays K*(a+b) per token. Ra and Rb are
    Cayley-parametrised (the paper's Cayley SGD on the Stiefel manifold; here Adam on the skew
    generator) and trained from the identity to minimise the layer's output error with weights and
    activations fake-quantized (straight-through), on the calibration samples the blockwise
    pipeline collects. Weights are then rounded by GPTQ on the learned rotation's Hessian (the
    paper's best variant) or RTN; if the result's output error on all the layer's samples is not
    below QuaRot's (the same rounding after the Hadamard rotation alone), QuaRot's is kept, so
    SpinQuant is never worse than QuaRot on the calibration data. The paper learns one
    residual-stream rotation end to end; quasr's rotations are online per layer (LayerNorm does not
    commute with a rotation, see QuaRot), so each is learned on its own layer's error."""

    name = "spinquant"

    @classmethod
    def options(cls):
        return {**QuaRot.options(), "steps": 50, "lr": 0.01, "samples": 512}

    def __init__(self, **kw):
        super().__init__(**kw)
        self.needs_calibration = True  # the rotations are learned on calibration audio

    def adjust_spec(self, name, module, spec, tied):
        return {**spec, "rotate": "learned"}

    def quantize_layer(self, job):
        if job.rotation is None:  # not rotatable (tied, odd width): plain GPTQ/RTN
            return super().quantize_layer(job)
        if job.inputs is None:  # grouped convs: no samples to learn from; the Hadamard rotation stays
            res = super().quantize_layer(job)
            return LayerResult(res.weight, res.input_mul, rotation=_as_learned(job.rotation))
        rot = job.rotation
        x = job.inputs.samples[: self.samples]
        ra, rb, _, _ = learn_rotation(x, job.weight, job.spec, job.act, rot.a, rot.b, self.steps, self.lr)
        left, right = rot.factors()
        learned = Rotation(rot.signs, left @ ra, right @ rb)
        inputs = _rotated_inputs(job.inputs, ra, rb)
        new_job = replace(job, weight=kron_apply(job.weight, ra, rb), inputs=inputs, rotation=learned)
        res = super().quantize_layer(new_job)
        # the rotation was learned against RTN-rounded weights; GPTQ's rounding may favour the plain
        # Hadamard one: keep whichever quantized layer has the smaller output error on all samples
        hadamard = super().quantize_layer(job)
        if layer_output_error(job, hadamard.weight, None) <= layer_output_error(new_job, res.weight, None):
            return LayerResult(hadamard.weight, rotation=_as_learned(rot), inputs=job.inputs)
        return LayerResult(res.weight, res.input_mul, rotation=learned, inputs=inputs)


def _as_learned(rot: Rotation) -> Rotation:
    """The Hadamard rotation with its factors stored explicitly (every layer of a spinquant plan
    has rotate: "learned", so it ships factors even where learning kept the starting point)."""
    return Rotation(rot.signs, *rot.factors())


def _rotated_inputs(inputs: LayerInputs, ra: torch.Tensor, rb: torch.Tensor) -> LayerInputs:
    """The statistics of rows x P, P = ra kron rb, from those of x: X^T X -> P^T X^T X P exactly;
    the per-channel statistics from the rotated samples (sums scaled to the row count)."""
    samples = kron_apply(inputs.samples, ra, rb)
    xtx = None
    if inputs.xtx is not None:
        p_d = (ra.double(), rb.double())
        xtx = kron_apply(kron_apply(inputs.xtx, *p_d).T.contiguous(), *p_d)
    a = samples.abs()
    # the extremes of rotated rows are not those of the rows: the sample's stand in for them
    return LayerInputs(inputs.k, inputs.need_hessian, inputs.max_samples, inputs.seed, inputs.count, xtx,
                       a.amax(0), a.mean(0) * inputs.count, samples.amin(0), samples.amax(0), samples)
