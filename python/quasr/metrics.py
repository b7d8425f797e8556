"""Efficiency metrics counted while a model transcribes (definitions: docs/METRICS.md).

`EfficiencyCounter` hooks every Linear/Conv1d and packed layer and, for each call (every encoder
pass and every decoder step of the greedy generation that produced the transcripts), counts:
  MACs         rows x K x N (rows: tokens, or output frames of a convolution), plus the online
               input rotation of QuaRot/SpinQuant layers: rows x K x (a + b) for the Kronecker
               factors a x b = K (also reported alone as rotation MACs)
  BOPs         MACs x weight bits x activation bits (float weights and unquantized activations
               count as 16 bits: Edge-ASR's A16/fp16 deployment convention); a rotation's MACs
               count at 16-bit activations times 1-bit weights for QuaRot's Hadamard factors
               (entries +-1) or 16-bit ones for SpinQuant's learned factors
  weight bytes the layer's stored weight read once per call (packed codes + fp16 scales/zeros, or
               the float weight at 16 bits) plus its bias and transform vectors
  act bytes    input rows x K at the activation width (16 bits if not quantized) + output rows x N
               at 16 bits
Divided by the seconds of audio transcribed, these are per second of audio. Attention score/value
products, softmax, norms and the embedding lookup are not counted (they have no quantized weight;
docs/METRICS.md says how large they are).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .nn import QuantConv1d, QuantLinear
from .rotation import rotation_factors

FLOAT_BITS = 16
HADAMARD_BITS = 1  # the width of a Hadamard matrix entry (+-1) in the BOPs of QuaRot's online rotation


@dataclass
class Counts:
    macs: float = 0.0
    bops: float = 0.0
    weight_bytes: float = 0.0
    act_bytes: float = 0.0
    rotation_macs: float = 0.0  # part of macs
    rotation_bops: float = 0.0  # part of bops: Hadamard factors at 1 x 16 bits, learned ones at 16 x 16

    def per_second(self, audio_seconds: float) -> dict:
        s = max(audio_seconds, 1e-9)
        return {"gmacs_per_audio_s": self.macs / s / 1e9, "gbops_per_audio_s": self.bops / s / 1e9,
                "weight_mb_per_audio_s": self.weight_bytes / s / 1e6, "act_mb_per_audio_s": self.act_bytes / s / 1e6,
                "mem_io_mb_per_audio_s": (self.weight_bytes + self.act_bytes) / s / 1e6,
                "rotation_gmacs_per_audio_s": self.rotation_macs / s / 1e9,
                "rotation_gbops_per_audio_s": self.rotation_bops / s / 1e9}


def _layer_profile(m: nn.Module) -> tuple[int, int, int, int, float]:
    """(K per output, N, weight bits, activation bits, stored bytes read per call)."""
    if isinstance(m, (QuantLinear, QuantConv1d)):
        k, n = m.packed_in_features, m.packed.shape[0]
        stored = sum(t.numel() * t.element_size() for t in (m.packed, m.scales, m.zeros, m.bias) if t is not None)
        stored += m.transform_bytes()
        return k, n, m.bits, m.act_bits or FLOAT_BITS, stored
    w = m.weight
    k, n = w[0].numel(), w.shape[0]
    stored = w.numel() * FLOAT_BITS // 8 + (m.bias.numel() * FLOAT_BITS // 8 if m.bias is not None else 0)
    return k, n, FLOAT_BITS, FLOAT_BITS, stored


def _rows(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    if isinstance(m, (nn.Conv1d, QuantConv1d)):  # output frames x batch; grouped convs: K is per group
        return y.shape[0] * y.shape[-1]
    return x.numel() // x.shape[-1]


class EfficiencyCounter:
    """with EfficiencyCounter(model) as c: ...  then c.counts."""

    def __init__(self, model: nn.Module):
        self.model, self.counts, self._handles = model, Counts(), []

    def __enter__(self):
        for m in self.model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, QuantLinear, QuantConv1d)):
                self._handles.append(m.register_forward_hook(self._hook))
        return self

    def _hook(self, m, args, out):
        k, n, wb, ab, stored = _layer_profile(m)
        rows = _rows(m, args[0], out)
        macs = rows * k * n
        c = self.counts
        c.macs += macs
        c.bops += macs * wb * ab
        c.weight_bytes += stored
        groups = getattr(m, "groups", 1)  # a grouped conv's GEMM rows are rows x groups, K per group
        c.act_bytes += rows * groups * k * ab / 8 + rows * n * FLOAT_BITS / 8
        if getattr(m, "rotation_signs", None) is not None:
            # the float activations are rotated before the kernel quantizes them: x -> (x . s)(L kron R)
            a, b = rotation_factors(k)
            rot = rows * groups * k * (a + b)
            c.rotation_macs += rot
            c.macs += rot
            # a Hadamard factor's entries are +-1 (1-bit weights: its products are sign flips, the MACs
            # additions); SpinQuant's learned factors are real 16-bit weights
            rot_bits = FLOAT_BITS if getattr(m, "rotation_left", None) is not None else HADAMARD_BITS
            rot_bops = rot * rot_bits * FLOAT_BITS
            c.rotation_bops += rot_bops
            c.bops += rot_bops
            c.act_bytes += 2 * rows * groups * k * FLOAT_BITS / 8

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False
