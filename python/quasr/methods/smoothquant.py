"""SmoothQuant (Xiao et al. 2023): activation outliers migrated into the weights by per-channel input
scales, then the weights rounded by RTN."""

from __future__ import annotations

from .common import scaled_importance
from .pipeline import LayerResult, Method
from .rtn import rtn_layer


class SmoothQuant(Method):
    """SmoothQuant (Xiao et al. 2023): s_j = max|x_j|^alpha / max|W_:,j|^(1-alpha) migrates activation
    outliers into the weights so that both quantize well at 8 bits; weights are then rounded (RTN)."""

    name = "smoothquant"
    may_smooth = True

    @classmethod
    def options(cls):
        return {"alpha": 0.5}

    def quantize_layer(self, job):
        if job.inputs is None or job.tied:
            return LayerResult(rtn_layer(job, self.clip))
        w_max = job.weight.abs().amax(0).clamp(min=1e-5)
        s = (job.inputs.abs_max.clamp(min=1e-5) ** self.alpha / w_max ** (1 - self.alpha)).clamp(min=1e-5)
        return LayerResult(rtn_layer(job, self.clip, job.weight * s, importance=scaled_importance(self, job, s)), 1.0 / s)
