"""QuaRot: a randomised Hadamard rotation of every layer's input, weights quantized after rotating
(spinquant.py learns the rotation instead).

QuaRot (Ashkboos et al. 2024) rotates the residual stream of an LLM and folds the rotation into the
weights, with online Hadamard transforms where a rotation cannot be folded. Whisper, Moonshine and
Wav2Vec2 use LayerNorm (mean subtraction), which does not commute with a rotation, so quasr applies
the rotation online at every quantized layer's input (rotation.py: a Kronecker-factored transform,
K*(a+b) multiply-adds per token) and stores W M. For each layer this is the same quantization
problem QuaRot solves (weights W M, activations x M: outliers spread over all channels); the online
cost is counted in the latency. Weights are then rounded by GPTQ (the paper's choice) or RTN.
"""

from __future__ import annotations

from .gptq import GPTQ
from .pipeline import LayerResult
from .rtn import rtn_layer


class QuaRot(GPTQ):
    name = "quarot"

    @classmethod
    def options(cls):
        return {**GPTQ.options(), "weights": "gptq"}

    def __init__(self, **kw):
        super().__init__(**kw)
        if self.weights not in ("gptq", "rtn"):
            raise ValueError(f"quarot weights must be 'gptq' or 'rtn', got {self.weights!r}")
        self.needs_hessian = self.weights == "gptq"
        self.needs_calibration = self.weights == "gptq" or self.clip == "hessian"

    def adjust_spec(self, name, module, spec, tied):
        return {**spec, "rotate": True}

    def quantize_layer(self, job):
        if self.weights == "rtn":
            return LayerResult(rtn_layer(job, self.clip))
        return super().quantize_layer(job)
