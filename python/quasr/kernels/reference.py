"""Plain-torch references of every quasr op: what each kernel computes, in float32, with nothing
clever. Every backend is tested against these; they are also the kernels of last resort (any
device, any shape)."""

from __future__ import annotations

import math
import functools
from dataclasses import dataclass, field

import torch

from ..format import PackedWeight, check_bits, dequantize


@dataclass(frozen=True)
class ActQuant:
    """Fake-quant of a layer's input activations: per-token dynamic ranges (scale <= 0; `per_group`:
    one range per token and weight group) or one static per-tensor range (scale, zero) calibrated
    beforehand. Symmetric uses the signed grid. `qparams` is the same (scale, zero) as a float32 [2]
    tensor on the layer's device, for kernels that read it there (no host value to copy per call)."""

    bits: int
    symmetric: bool = False
    scale: float = 0.0
    zero: float = 0.0
    qparams: torch.Tensor | None = field(default=None, compare=False, repr=False)
    per_group: bool = False

    def __post_init__(self):
        check_bits(self.bits)

    @property
    def dynamic(self) -> bool:
        return self.scale <= 0


def input_transform(x: torch.Tensor, input_mul: torch.Tensor | None, act: ActQuant | None,
                    group_size: int | None = None) -> torch.Tensor:
    """What the kernels do to x before the GEMM: the per-channel smoothing multiply, then the
    activation fake-quant (per-group ranges over the weight's `group_size` columns)."""
    from ..grid import fake_quant as fake_quant_activation, fake_quant_groups, fake_quant_tokens

    x = x.to(torch.float32)
    if input_mul is not None:
        x = x * input_mul.to(x.device, torch.float32)
    if act is None:
        return x
    if act.dynamic and act.per_group:
        if group_size is None:
            raise ValueError("per-group activation ranges need the weight's group size")
        return fake_quant_groups(x, act.bits, act.symmetric, group_size)
    if act.dynamic:
        return fake_quant_tokens(x, act.bits, act.symmetric)
    return fake_quant_activation(x, act.scale, act.zero, act.bits)


def qlinear(x: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None = None,
            input_mul: torch.Tensor | None = None, act: ActQuant | None = None) -> torch.Tensor:
    """Transform the input, dequantize, then matmul in float32."""
    w = dequantize(pw).to(x.device)
    y = input_transform(x, input_mul, act, pw.group_size) @ w.T
    if bias is not None:
        y = y + bias.to(y.device, torch.float32)
    return y.to(x.dtype)


def rotate(x: torch.Tensor, signs: torch.Tensor | None, orders: list[int], dense: list[torch.Tensor | None],
           scale: float) -> torch.Tensor:
    """(x * signs) (F_0 kron F_1 kron ...) * scale along the last dim, F_i the Sylvester Hadamard
    matrix of order orders[i] (dense[i] None) or dense[i]: one contraction per factor."""
    k = x.shape[-1]
    if math.prod(orders) != k or len(orders) != len(dense):
        raise ValueError(f"rotation factors {orders} do not multiply to the width {k}")
    y = x.to(torch.float32)
    if signs is not None:
        y = y * signs.to(y.device, torch.float32)
    lead = y.shape[:-1]
    y = y.reshape(*lead, *orders)
    for axis, (order, mat) in enumerate(zip(orders, dense)):
        f = _hadamard_on(order, y.device) if mat is None else mat
        if f is None or tuple(f.shape) != (order, order):
            raise ValueError(f"rotation factor {axis} must be [{order}, {order}] (no Hadamard matrix of that order)")
        f = f.to(y.device, torch.float32)  # a no-op for factors already there (the callers cache them per device)
        y = torch.movedim(torch.tensordot(y, f, dims=([len(lead) + axis], [0])), -1, len(lead) + axis)
    return (y.reshape(*lead, k) * scale).contiguous()


@functools.lru_cache(maxsize=64)
def _hadamard_on(order: int, device: torch.device) -> torch.Tensor | None:
    """hadamard(order) as float32 on `device`, made once per device (not copied per call)."""
    from ..rotation import hadamard

    h = hadamard(order)
    return None if h is None else h.to(device, torch.float32)


# -- the ops' signatures (registered as their CompositeExplicitAutograd kernels in schemas.py) ------
def _packed(packed, scales, zeros, bits, group_size, in_features) -> PackedWeight:
    return PackedWeight(packed, scales, zeros, bits, group_size, in_features)


def qlinear_op(x, packed, scales, zeros, bias, bits, group_size, in_features, kernel=0, input_mul=None, act_bits=0,
               act_symmetric=False, act_scale=0.0, act_zero=0.0, act_group=False):
    act = ActQuant(act_bits, act_symmetric, act_scale, act_zero, per_group=act_group) if act_bits else None
    return qlinear(x, _packed(packed, scales, zeros, bits, group_size, in_features), bias, input_mul, act)


def dequantize_op(packed, scales, zeros, bits, group_size, in_features):
    return dequantize(_packed(packed, scales, zeros, bits, group_size, in_features))


def rotate_op(x, signs, orders, dense, scale, kernel=0):
    return rotate(x, signs, list(orders), list(dense), scale)


def attention_bf16(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Unmasked, non-causal attention with bf16 operands and float32 sums (csrc/cpu/attention.h):
    q * scale, k, v and the unnormalised softmax weights rounded to bf16, everything else float32.
    q [..., Tq, D], k and v [..., Tk, D]; float32 [..., Tq, D]."""
    def bf16(t):
        return t.to(torch.bfloat16).float()

    s = bf16(q.float() * scale) @ bf16(k.float()).transpose(-1, -2)
    e = torch.exp(s - s.amax(-1, keepdim=True))
    return (bf16(e) @ bf16(v.float())) / e.sum(-1, keepdim=True)


def attention_op(q, k, v, scale, kernel=0):
    return attention_bf16(q, k, v, scale)
