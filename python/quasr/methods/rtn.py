"""RTN: round to nearest with per-group ranges (quantize.py), and `rtn_layer`, the rounding every other
method falls back to (layers without calibration inputs) or compares against."""

from __future__ import annotations

import torch

from ..format import PackedWeight
from ..quantize import rtn_quantize
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
