"""AWQ (Lin et al. 2024): activation-aware per-channel input scales searched for the smallest
layer-output error, then the weights rounded by RTN."""

from __future__ import annotations

import math

import torch

from .common import layer_output_error, scaled_importance
from .pipeline import LayerResult, Method
from .rtn import rtn_layer


def _normalised(s: torch.Tensor) -> torch.Tensor:
    s = s.clamp(min=1e-5)
    return s / math.sqrt(float(s.max() * s.min()))


class AWQ(Method):
    """AWQ (Lin et al. 2024): protect the weights that multiply large activations by scaling their
    input channels up before rounding, s = mean|x|^alpha, alpha searched on a grid for the smallest
    layer-output error on the calibration samples (activation quantization included when the spec
    has it). alpha = 0 (no scaling) is on the grid, so AWQ is never worse than RTN on those samples."""

    name = "awq"
    may_smooth = True

    @classmethod
    def options(cls):
        return {"grid": 20}

    def quantize_layer(self, job):
        base = rtn_layer(job, self.clip)
        if job.inputs is None or job.tied:
            return LayerResult(base)
        best, best_err, best_mul = base, layer_output_error(job, base, None), None
        mean_abs = job.inputs.mean_abs()
        for i in range(1, self.grid):
            s = _normalised(mean_abs ** (i / self.grid))
            pw = rtn_layer(job, self.clip, job.weight * s, importance=scaled_importance(self, job, s))
            err = layer_output_error(job, pw, 1.0 / s)
            if err < best_err:
                best, best_err, best_mul = pw, err, 1.0 / s
        return LayerResult(best, best_mul)
